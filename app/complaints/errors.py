from __future__ import annotations

from app.errors import DomainError, NotFound, RateLimited


class ComplaintNotFound(NotFound):
    code = "complaint_not_found"
    message_fa = "شکایتی با این کد رهگیری پیدا نشد."
    message_en = "No complaint has this tracking code."


class TransitionNotAllowed(DomainError):
    code = "transition_not_allowed"
    status = 409
    message_fa = "این مرحله از وضعیت فعلی شکایت مجاز نیست."
    message_en = "This step is not allowed from the complaint's current state."


class ComplaintInProgress(DomainError):
    """The same complaint form was sent again while the first send is still filing it."""

    code = "complaint_in_progress"
    status = 409
    message_fa = (
        "شکایت شما هنوز در حال ثبت است. چند لحظه بعد دوباره «ثبت شکایت» را بزنید تا آن را ببینید؛ دوباره ثبت نمی‌شود."
    )
    message_en = "The same complaint is still being filed. Send the form again in a moment to see it."


class TooManyComplaints(RateLimited):
    """A mobile has filed as many complaints as it may for now (NOBAT_COMPLAINTS_PER_MOBILE)."""

    code = "too_many_complaints"
    message_fa = "با این شمارهٔ همراه بیش از این شکایت نمی‌توان ثبت کرد؛ لطفاً بعداً دوباره تلاش کنید."
    message_en = "This mobile has filed as many complaints as it may for now; try again later."
