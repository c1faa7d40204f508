"""The validation report of a dataset: problems found while reading it, and its counts.

Readers collect problems here instead of raising on the first one, so that one run lists
everything to fix and whatever was valid is still returned.
"""

from __future__ import annotations

import dataclasses


class DatasetError(ValueError):
    """Raised by `Report.raise_if_errors` (and by builders that refuse invalid data)."""


@dataclasses.dataclass
class Report:
    """Errors, warnings and counts from `jdet.data.zalo.load_dataset`.

    Every message starts with the file it concerns (relative to `root`) and, for annotation
    problems, the video id, frame and field. Counts cover the usable videos only.
    """

    root: str
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    num_sample_folders: int = 0  # folders under samples/, usable or not
    num_videos: int = 0  # usable videos (the returned records)
    num_frames: int = 0  # frames in the usable videos
    num_annotated_frames: int = 0  # frames with a (valid, de-duplicated) box
    num_boxes: int = 0  # box entries read from annotations.json, before any check
    num_negative_videos: int = 0  # usable videos without any box
    num_references: int = 0  # readable reference photos of usable videos
    videos_checked: bool = True  # False with check_videos=False (header only, no decoding)

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings are allowed)."""
        return not self.errors

    def error(self, message: str) -> None:
        self.errors.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def summary(self) -> str:
        """One line of counts."""
        return (f"{self.num_videos} videos ({self.num_negative_videos} negative) of "
                f"{self.num_sample_folders} sample folders, {self.num_frames} frames, "
                f"{self.num_annotated_frames} annotated frames, {self.num_boxes} boxes, "
                f"{self.num_references} reference photos")

    def format(self, max_items: int = 25) -> str:
        """Readable multi-line report; lists at most `max_items` errors and warnings each."""
        lines = [f"Dataset {self.root}", f"  {self.summary()}"]
        lines.append("  videos: " + ("header, all packets, first and last frame checked"
                                     if self.videos_checked
                                     else "header only (--no-video-check: nothing decoded)"))
        for title, items in (("error", self.errors), ("warning", self.warnings)):
            if not items:
                continue
            lines.append(f"{len(items)} {title}{'s' if len(items) != 1 else ''}:")
            lines += [f"  - {m}" for m in items[:max_items]]
            if len(items) > max_items:
                lines.append(f"  ... and {len(items) - max_items} more")
        lines.append("OK" if self.ok else
                     f"FAILED: {len(self.errors)} error(s); fix them and validate again")
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        """Raise DatasetError with the formatted report when there are errors."""
        if self.errors:
            raise DatasetError(self.format())
