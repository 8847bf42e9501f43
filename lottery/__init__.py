"""Ticket finding: IMP / A-IMP levels on the pre-training task (cli -> config -> levels, with state for resume)."""
