"""Tables owned by the connections service."""

from sqlalchemy.orm import DeclarativeBase

from services.common.outbox import OutboxMixin


class Base(DeclarativeBase):
    pass


class OutboxEvent(OutboxMixin, Base):
    pass
