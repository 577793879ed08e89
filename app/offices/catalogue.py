"""The national service catalogue: what a counter office can sell, how long it takes, what it costs.

The real catalogue lists about 550 services; these are the ones the source documents name,
which are also the ones citizens queue for. Codes are three ASCII digits because citizens
type them in an SMS. Durations are typical desk times; tariffs are plausible office fees in
rials (the regulator caps them), not the government fee collected on top.
"""

from __future__ import annotations

import msgspec


class CatalogueService(msgspec.Struct, frozen=True):
    code: str
    name_fa: str
    name_en: str
    agency_fa: str
    duration_minutes: int
    tariff_rials: int


SERVICES: tuple[CatalogueService, ...] = (
    # Offices must not favour one mobile operator over another, so all three are always offered.
    CatalogueService(
        "101",
        "خدمات ایرانسل (سیم‌کارت، انتقال مالکیت)",
        "Irancell services (SIM card, ownership transfer)",
        "شرکت خدمات ارتباطی ایرانسل",
        10,
        50_000,
    ),
    CatalogueService(
        "102",
        "خدمات همراه اول (سیم‌کارت، انتقال مالکیت)",
        "Hamrah-e Aval services (SIM card, ownership transfer)",
        "شرکت ارتباطات سیار ایران (همراه اول)",
        10,
        50_000,
    ),
    CatalogueService(
        "103",
        "خدمات رایتل (سیم‌کارت، انتقال مالکیت)",
        "Rightel services (SIM card, ownership transfer)",
        "شرکت خدمات ارتباطی رایتل",
        10,
        50_000,
    ),
    CatalogueService(
        "104", "پرداخت عوارض آزادراهی", "Freeway toll payment", "شرکت ساخت و توسعهٔ زیربناهای حمل‌ونقل کشور", 5, 30_000
    ),
    CatalogueService(
        "105", "عوارض سالانه و مالیات خودرو", "Vehicle annual levy and tax", "سازمان امور مالیاتی کشور", 10, 60_000
    ),
    CatalogueService("106", "استعلام مدرک تحصیلی", "Education certificate inquiry", "وزارت آموزش و پرورش", 10, 80_000),
    CatalogueService(
        "107",
        "خدمات گاز (انشعاب، تغییر نام، صورتحساب)",
        "Gas company services (connection, name change, bills)",
        "شرکت ملی گاز ایران",
        15,
        100_000,
    ),
    CatalogueService(
        "108",
        "ارسال و دریافت مرسولات پستی",
        "Post parcels (sending and receiving)",
        "شرکت ملی پست جمهوری اسلامی ایران",
        10,
        40_000,
    ),
    CatalogueService(
        "109", "صدور کارت منزلت بازنشستگان", "Retiree manzelat card", "صندوق بازنشستگی کشوری", 15, 150_000
    ),
    CatalogueService(
        "110",
        "صدور و تمدید دفترچهٔ بیمهٔ سلامت",
        "Health-insurance booklet issue and renewal",
        "سازمان بیمهٔ سلامت ایران",
        15,
        120_000,
    ),
    CatalogueService("111", "خدمات بیمهٔ درمان", "Medical insurance services", "سازمان تأمین اجتماعی", 15, 100_000),
    CatalogueService(
        "112", "صدور و تعویض شناسنامه", "Birth certificate issue and replacement", "سازمان ثبت احوال کشور", 20, 200_000
    ),
    CatalogueService(
        "113", "ثبت‌نام کارت هوشمند ملی", "National ID card application", "سازمان ثبت احوال کشور", 20, 250_000
    ),
    CatalogueService("114", "صدور کارت بهداشت", "Health card", "وزارت بهداشت، درمان و آموزش پزشکی", 15, 150_000),
    CatalogueService(
        "115",
        "استعلام وضعیت سهام عدالت",
        "Justice shares status",
        "شرکت سپرده‌گذاری مرکزی اوراق بهادار و تسویهٔ وجوه",
        5,
        30_000,
    ),
    CatalogueService(
        "116",
        "ثبت‌نام و احراز هویت سجام",
        "SEJAM registration and identity verification",
        "شرکت سپرده‌گذاری مرکزی اوراق بهادار و تسویهٔ وجوه",
        15,
        150_000,
    ),
    CatalogueService(
        "117",
        "خدمات منابع طبیعی و آبخیزداری",
        "Natural resources and watershed services",
        "سازمان منابع طبیعی و آبخیزداری کشور",
        20,
        120_000,
    ),
    CatalogueService(
        "118", "صدور و تمدید گواهینامهٔ رانندگی", "Driving licence issue and renewal", "پلیس راهور", 20, 200_000
    ),
    CatalogueService(
        "119", "استعلام و پرداخت خلافی خودرو", "Traffic fines inquiry and payment", "پلیس راهور", 5, 30_000
    ),
    CatalogueService("120", "ثبت‌نام گذرنامه", "Passport application", "پلیس مهاجرت و گذرنامه", 30, 300_000),
    CatalogueService(
        "121", "فروش بلیت اتوبوس بین‌شهری", "Intercity bus ticket", "سازمان راهداری و حمل‌ونقل جاده‌ای", 5, 20_000
    ),
    CatalogueService(
        "122", "پرداخت قبوض آب، برق، گاز و تلفن", "Utility bill payment", "شرکت‌های آب، برق، گاز و مخابرات", 5, 20_000
    ),
    CatalogueService(
        "123", "ثبت‌نام اسقاط خودروی فرسوده", "Car scrapping registration", "وزارت صنعت، معدن و تجارت", 20, 150_000
    ),
    CatalogueService(
        "124", "خدمات گمرکی و ترخیص مرسولات", "Customs clearance services", "گمرک جمهوری اسلامی ایران", 20, 150_000
    ),
    CatalogueService(
        "125", "افتتاح حساب و خدمات پست بانک", "Post Bank account and services", "پست بانک ایران", 15, 50_000
    ),
    CatalogueService(
        "126",
        "خدمات تلفن ثابت و اینترنت مخابرات",
        "Fixed-line telephone and internet",
        "شرکت مخابرات ایران",
        10,
        50_000,
    ),
)

OPERATOR_SERVICES: tuple[str, ...] = ("101", "102", "103")

RURAL_SERVICES: tuple[str, ...] = ("101", "102", "103", "108", "110", "115", "119", "122", "125", "126")
"""What a rural ICT office offers: the everyday services of a village, most of them postal,
telecom and payment ones; identity documents and passports need a town counter office."""

BY_CODE: dict[str, CatalogueService] = {service.code: service for service in SERVICES}
