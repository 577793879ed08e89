"""The office registry: where offices are, what they offer, and whether they may take bookings."""

from __future__ import annotations

import enum

from sqlalchemy import Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, enum_column


class CityClass(enum.StrEnum):
    """The licence-fee location classes of the regulator."""

    METROPOLIS = "metropolis"
    PROVINCE_CAPITAL = "province_capital"
    CITY_OVER_50K = "city_over_50k"
    OTHER_CITY = "other_city"
    VILLAGE = "village"


class OfficeKind(enum.StrEnum):
    COUNTER = "counter"  # دفتر پیشخوان خدمات دولت
    RURAL_ICT = "rural_ict"  # دفتر ICT روستایی


class OfficeStatus(enum.StrEnum):
    ACTIVE = "active"
    RESTRICTED = "restricted"
    BLOCKED = "blocked"


class Province(Base):
    __tablename__ = "provinces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(2), unique=True)
    name_fa: Mapped[str] = mapped_column(String(60))
    name_en: Mapped[str] = mapped_column(String(60), unique=True)
    population: Mapped[int] = mapped_column(Integer)


class City(Base):
    __tablename__ = "cities"
    __table_args__ = (UniqueConstraint("province_id", "name_fa"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    province_id: Mapped[int] = mapped_column(ForeignKey("provinces.id"), index=True)
    name_fa: Mapped[str] = mapped_column(String(80), index=True)
    name_en: Mapped[str] = mapped_column(String(80))
    city_class: Mapped[CityClass] = mapped_column(enum_column(CityClass))
    population: Mapped[int] = mapped_column(Integer)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)

    province: Mapped[Province] = relationship(lazy="joined")


class Service(Base):
    """A government e-service an office can deliver (the catalogue is national)."""

    __tablename__ = "services"

    code: Mapped[str] = mapped_column(String(8), primary_key=True)
    name_fa: Mapped[str] = mapped_column(String(120))
    name_en: Mapped[str] = mapped_column(String(120))
    agency_fa: Mapped[str] = mapped_column(String(120))
    duration_minutes: Mapped[int] = mapped_column(Integer)
    tariff_rials: Mapped[int] = mapped_column(Integer)


class Office(Base):
    __tablename__ = "offices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(10), unique=True)
    name_fa: Mapped[str] = mapped_column(String(120))
    kind: Mapped[OfficeKind] = mapped_column(enum_column(OfficeKind))
    city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"), index=True)
    address_fa: Mapped[str] = mapped_column(String(250))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    status: Mapped[OfficeStatus] = mapped_column(enum_column(OfficeStatus), default=OfficeStatus.ACTIVE)
    # Share of seats new bookings may take while restricted (100 = no cap).
    cap_percent: Mapped[int] = mapped_column(Integer, default=100)
    counters: Mapped[int] = mapped_column(Integer, default=2)

    city: Mapped[City] = relationship(lazy="joined")


class OfficeService(Base):
    __tablename__ = "office_services"

    office_id: Mapped[int] = mapped_column(ForeignKey("offices.id"), primary_key=True)
    service_code: Mapped[str] = mapped_column(ForeignKey("services.code"), primary_key=True, index=True)
