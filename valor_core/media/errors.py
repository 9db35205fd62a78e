"""Typed media errors: one class per way a real corpus breaks, each carrying the video id and a reason.

Fatal kinds (`fatal = True`) are raised by `decode()`: nothing usable came out of the file. Recoverable kinds
(`fatal = False`) are *recorded* in `DecodedVideo.issues` and the video is still returned (the policy applied is in
`DecodedVideo.notes`); `decode(..., strict=True)` raises the first of them instead. Every error pickles (Ray moves them
between processes) and has a stable `kind` string for tables (`to_dict()`).
"""
from __future__ import annotations


class MediaError(Exception):
    """Base class: `video_id`, `reason`, a stable `kind` string, and whether the video is unusable (`fatal`)."""

    kind = "media_error"
    fatal = True

    def __init__(self, video_id: str = "", reason: str = ""):
        self.video_id = str(video_id)
        self.reason = str(reason)
        super().__init__(self.video_id, self.reason)

    def __str__(self) -> str:
        return f"{self.video_id or '<video>'}: {self.kind}: {self.reason}"

    def __reduce__(self):
        return (type(self), (self.video_id, self.reason))

    def to_dict(self) -> dict:
        return {"video_id": self.video_id, "kind": self.kind, "fatal": self.fatal, "reason": self.reason}


# --- fatal: decode() raises these -----------------------------------------------------------------------------------


class SourceUnreadable(MediaError):
    """The path does not exist or cannot be read."""

    kind = "unreadable"


class EmptyFile(MediaError):
    """Zero bytes."""

    kind = "empty"


class TruncatedFile(MediaError):
    """A recognised container whose boxes run past the end of the data, or whose index (moov) is missing."""

    kind = "truncated"


class NotAVideo(MediaError):
    """Not a media container any demuxer recognises."""

    kind = "not_video"


class NoVideoStream(NotAVideo):
    """A media file without a video stream (e.g. audio only)."""

    kind = "no_video_stream"


class UnknownCodec(MediaError):
    """A video stream whose codec no decoder here supports."""

    kind = "unknown_codec"


class TooShort(MediaError):
    """Shorter than `MediaConfig.min_duration` seconds: too little to cut into segments."""

    kind = "too_short"


class DecodeFailed(MediaError):
    """The decoder failed for any other reason (corrupt stream, ...); the reason carries its message."""

    kind = "decode_failed"


# --- recoverable: recorded in DecodedVideo.issues ------------------------------------------------------------------


class MediaIssue(MediaError):
    """Base of the recoverable kinds."""

    kind = "media_issue"
    fatal = False


class NoAudioTrack(MediaIssue):
    """No audio stream: frames are returned, `audio` is None and `audio_missing` True (the visual teacher still runs)."""

    kind = "no_audio"


class AudioDecodeFailed(MediaIssue):
    """An audio stream exists but could not be decoded (or is shorter than one sample per segment): audio missing."""

    kind = "audio_failed"


class SilentAudio(MediaIssue):
    """Audio present but silent (peak below `MediaConfig.silence_threshold`): returned as is, flagged."""

    kind = "silent_audio"


class ShortClip(MediaIssue):
    """Shorter than segments x segment_seconds: handled by `MediaConfig.length_policy` (see notes)."""

    kind = "short_clip"


class LongClip(MediaIssue):
    """Longer than segments x segment_seconds: handled by `MediaConfig.length_policy` (see notes)."""

    kind = "long_clip"


class VariableFrameRate(MediaIssue):
    """Frame durations vary: frames are picked by presentation time, so the sampling stays correct."""

    kind = "variable_frame_rate"


class UnusualGeometry(MediaIssue):
    """Portrait or odd-sized picture: resized to the teacher size without cropping (aspect ratio not kept)."""

    kind = "unusual_geometry"


FATAL_KINDS = (SourceUnreadable, EmptyFile, TruncatedFile, NotAVideo, NoVideoStream, UnknownCodec, TooShort,
               DecodeFailed)
ISSUE_KINDS = (NoAudioTrack, AudioDecodeFailed, SilentAudio, ShortClip, LongClip, VariableFrameRate, UnusualGeometry)
