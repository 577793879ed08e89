"""nobat: the appointment service of Iran's government counter offices."""

import zoneinfo

# Every process reads its zones from the tzdata package pinned in pyproject.toml, not from
# the host: an image with data older than 2022b still moves Tehran's clocks an hour each
# spring, and every slot, grace period, reminder and night's close would be an hour off
# (while the instances of a newer image kept the right time beside them). The scheduler
# checks that the host agrees, as the C library it times its jobs by reads the host's
# (workers.cron).
zoneinfo.reset_tzpath(to=())
