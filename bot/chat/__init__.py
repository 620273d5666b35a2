"""Front ends that are clients of the gateway."""
