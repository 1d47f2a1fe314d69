"""Pipeline stages, one module per verb: read, prepare, batch, embed, write. No Ray in here."""
