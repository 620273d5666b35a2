-- Run once by the postgres image on an empty data directory: Rasa's tracker store gets its own database.
CREATE DATABASE mydsp_rasa OWNER mydsp;
