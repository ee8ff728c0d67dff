"""Tables owned by the activities service."""

from sqlalchemy.orm import DeclarativeBase

from services.common.outbox import OutboxMixin


class Base(DeclarativeBase):
    pass


class OutboxEvent(OutboxMixin, Base):
    pass
