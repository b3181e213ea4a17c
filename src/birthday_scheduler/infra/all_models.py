"""Imports every table so that Base.metadata is complete (for migrations and tests)."""

from birthday_scheduler.infra.orm import Base
from birthday_scheduler.messages.models import MessageLog, MessageSchedule, SchedulerHeartbeat
from birthday_scheduler.users.models import User

__all__ = ["Base", "MessageLog", "MessageSchedule", "SchedulerHeartbeat", "User"]
