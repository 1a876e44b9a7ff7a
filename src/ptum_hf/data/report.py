"""What ingestion kept, dropped and changed."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class IngestReport:
    """
    Counts of one ingestion. Every event read is either kept or dropped for one named reason, so
    `events_read == events_kept + sum(dropped_events.values())`; the same holds for users and, when a CTR task is
    built, for impressions.

    Attributes:
        files: the files read.
        rows_read: records read from the files (a per-user row with lists counts once).
        events_read: events read (per-user list rows exploded into their events).
        events_kept: events stored in `BehaviorDataset.users`.
        dropped_events: reason -> count (`missing_user_id`, `invalid_user_id` (not a string or an integer),
            `nul_byte` (in the user id or text), `missing_text`, `missing_timestamp`, `negative_timestamp`,
            `timestamp_after_2100`, `duplicate_event`, `user_too_short`; MIND: `unknown_news`). Each event has one
            reason: the first rule it breaks, in this order.
        users_read: distinct users in the log or the labels table.
        users_kept: rows of `BehaviorDataset.users`.
        dropped_users: reason -> count (`no_events`: only in the labels table or every event dropped;
            `too_few_behaviors`: fewer than `min_behaviors` events kept).
        texts_truncated: events whose text was cut to `max_text_chars` (counted before duplicates are removed).
        users_reordered: kept users whose events were not in time order in the input (they were sorted).
        tied_timestamps: kept events with the same time as the user's previous event (kept, in input order).
        label_counts: label name -> class -> kept users with that class (every class, in class-id order).
        missing_labels / invalid_labels: label name -> kept users without a (valid) label.
        impressions_read / impressions_kept / dropped_impressions: the CTR task's examples, where one is built.
        notes: anything else worth knowing about this input, in words (e.g. where the first event dropped as
            `invalid_user_id`, `nul_byte` or `timestamp_after_2100` was; printed by `summary`).
    """

    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    events_read: int = 0
    events_kept: int = 0
    dropped_events: dict[str, int] = field(default_factory=dict)
    users_read: int = 0
    users_kept: int = 0
    dropped_users: dict[str, int] = field(default_factory=dict)
    texts_truncated: int = 0
    users_reordered: int = 0
    tied_timestamps: int = 0
    label_counts: dict[str, dict] = field(default_factory=dict)
    missing_labels: dict[str, int] = field(default_factory=dict)
    invalid_labels: dict[str, int] = field(default_factory=dict)
    impressions_read: int = 0
    impressions_kept: int = 0
    dropped_impressions: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop_events(self, reason: str, count: int) -> None:
        """Add `count` dropped events under `reason` (zero counts are not recorded)."""
        _add(self.dropped_events, reason, count)

    def drop_users(self, reason: str, count: int) -> None:
        _add(self.dropped_users, reason, count)

    def drop_impressions(self, reason: str, count: int) -> None:
        _add(self.dropped_impressions, reason, count)

    def merge(self, other: IngestReport) -> None:
        """Add another report's counts to this one (used by streaming, one report per file)."""
        for name in (
            "rows_read",
            "events_read",
            "events_kept",
            "users_read",
            "users_kept",
            "texts_truncated",
            "users_reordered",
            "tied_timestamps",
            "impressions_read",
            "impressions_kept",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("dropped_events", "dropped_users", "missing_labels", "invalid_labels", "dropped_impressions"):
            setattr(self, name, dict(Counter(getattr(self, name)) + Counter(getattr(other, name))))
        for label, counts in other.label_counts.items():
            mine = self.label_counts.setdefault(label, {})
            for name, count in counts.items():
                mine[name] = mine.get(name, 0) + count
        self.files += [f for f in other.files if f not in self.files]
        self.notes += other.notes

    def check(self) -> None:
        """Raise `AssertionError` if the counts do not add up (a bug, not a data problem)."""
        assert self.events_read == self.events_kept + sum(self.dropped_events.values()), self
        assert self.users_read == self.users_kept + sum(self.dropped_users.values()), self
        assert self.impressions_read == self.impressions_kept + sum(self.dropped_impressions.values()), self

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"rows: {self.rows_read} read; events: {self.events_read} read, {self.events_kept} kept, "
            f"dropped {self.dropped_events or 'none'}",
            f"users: {self.users_read} read, {self.users_kept} kept, dropped {self.dropped_users or 'none'}",
        ]
        if self.texts_truncated or self.users_reordered or self.tied_timestamps:
            lines.append(
                f"texts truncated: {self.texts_truncated}; users sorted by time: {self.users_reordered}; "
                f"events tied in time: {self.tied_timestamps}"
            )
        lines += [self._label_line(label) for label in self.label_counts]
        if self.impressions_read:
            lines.append(
                f"impressions: {self.impressions_read} read, {self.impressions_kept} kept, "
                f"dropped {self.dropped_impressions or 'none'}"
            )
        return "\n".join(lines + self.notes)

    def _label_line(self, label: str, shown: int = 10) -> str:
        counts = self.label_counts[label]
        classes = ", ".join(f"{name}: {count}" for name, count in list(counts.items())[:shown])
        more = f", ... ({len(counts) - shown} more classes)" if len(counts) > shown else ""
        invalid = self.invalid_labels.get(label, 0)
        return (
            f"label {label!r}: {sum(counts.values())} users labeled ({classes}{more}); "
            f"{self.missing_labels.get(label, 0) + invalid} without a label"
            + (f" ({invalid} invalid, set missing)" if invalid else "")
        )


def _add(counts: dict[str, int], reason: str, count: int) -> None:
    if count:
        counts[reason] = counts.get(reason, 0) + int(count)
