"""Pure helpers with no Django models: env parsing, secrets, durations."""
