"""Calendar feeds: the activities of a calendar as RFC 5545 iCalendar text (icalendar)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import icalendar

from .service import CalendarEntry

PRODID = "-//HealthConnect//Activities//EN"
UID_DOMAIN = "healthconnect"
MEDIA_TYPE = "text/calendar"


def uid(activity_id: int) -> str:
    """Stable for the activity's whole life, so a calendar app updates the event in place."""
    return f"activity-{activity_id}@{UID_DOMAIN}"


def _organizer(entry: CalendarEntry) -> icalendar.vCalAddress:
    # The professional's address, from the connections that named them; one nobody is
    # connected to yet is named by a URN of their id (a calendar address is any URI).
    if entry.organizer_email:
        address = icalendar.vCalAddress(f"mailto:{entry.organizer_email}")
    else:
        address = icalendar.vCalAddress(f"urn:healthconnect:user:{entry.professional_id}")
    address.params["cn"] = icalendar.vText(
        entry.organizer_name or f"Professional {entry.professional_id}"
    )
    return address


def render(entries: Sequence[CalendarEntry], *, name: str = "HealthConnect") -> bytes:
    """One VCALENDAR with a VEVENT per entry: times in UTC, SEQUENCE raised on every change,
    cancelled ones kept as STATUS:CANCELLED (so calendar apps drop them)."""
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", name)
    for entry in entries:
        event = icalendar.Event()
        event.add("uid", uid(entry.activity_id))
        # Without a METHOD, DTSTAMP is the time the event's information last changed
        # (RFC 5545 3.8.7.2), which keeps the feed the same between two changes.
        event.add("dtstamp", entry.updated_at)
        event.add("dtstart", entry.starts_at.astimezone(dt.UTC))
        event.add(
            "dtend",
            entry.starts_at.astimezone(dt.UTC) + dt.timedelta(minutes=entry.duration_minutes),
        )
        event.add("summary", entry.title)
        if entry.description:
            event.add("description", entry.description)
        event.add("sequence", entry.sequence)
        event.add("status", "CANCELLED" if entry.cancelled else "CONFIRMED")
        event.add("organizer", _organizer(entry))
        event.add("created", entry.created_at)
        event.add("last-modified", entry.updated_at)
        cal.add_component(event)
    return cal.to_ical()
