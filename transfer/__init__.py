"""Transfer of a ticket: standard or adversarial fine-tuning, then the final SA/RA test (cli -> config -> run)."""
