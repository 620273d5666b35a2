"""MyDSP Assistant application package: DSP domain layer, gateway, front ends, launcher."""
