"""Example tasks; each folder is a whole task (code plus rsi.toml) that `rsi demo` or a user can copy."""
