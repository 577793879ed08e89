"""An office's capacity plan as kept in the record; Redis holds its materialised form."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class CapacityTemplate(Base):
    """One office's weekly template, stored as the msgspec-encoded ``WeeklyTemplate``.

    A JSON column rather than a row per rule: the template is always read and written
    whole, and 17,000 offices load in one insert instead of a hundred thousand.
    """

    __tablename__ = "capacity_templates"

    office_id: Mapped[int] = mapped_column(ForeignKey("offices.id"), primary_key=True)
    template: Mapped[str] = mapped_column(Text)
