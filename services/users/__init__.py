"""Users domain: accounts, credentials, login sessions."""
