"""The official QQ bot platform: webhook in (ed25519), passive replies out."""
