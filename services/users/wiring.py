"""What the platform needs from the users domain: its events leave through an outbox."""
from infra.wiring import Domain

domain = Domain(name="users", outbox=True)
