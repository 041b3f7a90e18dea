"""Data sources (download/locate raw data) and the prepared format every later stage reads."""
