"""Model manager: the models root, its config, SQLite records, installs and autoimport."""
