"""Media: decode a video into the frames and audio segments the teachers need; write test media.

    from valor_core.media import decode, try_decode, MediaError
    v = decode("clip.mp4")            # or decode(data_bytes, video_id="abc")
    v.frames  # (10, 224, 224, 3) uint8;  v.audio  # (10, L) float32 48 kHz mono or None (v.audio_missing)
"""
from valor_core.media.decode import DecodedVideo, decode, try_decode
from valor_core.media.errors import (
    FATAL_KINDS,
    ISSUE_KINDS,
    AudioDecodeFailed,
    DecodeFailed,
    EmptyFile,
    LongClip,
    MediaError,
    MediaIssue,
    NoAudioTrack,
    NotAVideo,
    NoVideoStream,
    ShortClip,
    SilentAudio,
    SourceUnreadable,
    TooShort,
    TruncatedFile,
    UnknownCodec,
    UnusualGeometry,
    VariableFrameRate,
)

__all__ = [
    "DecodedVideo", "decode", "try_decode", "MediaError", "MediaIssue", "FATAL_KINDS", "ISSUE_KINDS",
    "SourceUnreadable", "EmptyFile", "TruncatedFile", "NotAVideo", "NoVideoStream", "UnknownCodec", "TooShort",
    "DecodeFailed", "NoAudioTrack", "AudioDecodeFailed", "SilentAudio", "ShortClip", "LongClip", "VariableFrameRate",
    "UnusualGeometry",
]
