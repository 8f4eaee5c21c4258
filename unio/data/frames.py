"""The frames of a clip: from a list of pictures, a folder of frame files, an animated GIF or a video file.

Video files are decoded with PyAV (FFmpeg's libraries; ``pip install "unio[video]"``), an optional
dependency: a clip given as a folder of frames or an animated GIF needs nothing beyond Pillow.
``frames=T`` picks T frames spread evenly over the clip (the first and the last included), as video
models sample a clip (TimeSformer and ViViT sample uniformly); ``frames=None`` keeps them all.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from ..errors import ImageError, InputError
from ..images import IMAGE_EXTENSIONS, load_image

try:  # optional: video files
    import av
except ImportError:  # pragma: no cover - depends on the environment
    av = None

__all__ = ["load_frames", "is_clip_source", "VIDEO_EXTENSIONS", "MAX_FRAMES_READ"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MAX_FRAMES_READ = 10_000  # a longer video is refused rather than decoded whole into memory


def is_clip_source(x) -> bool:
    """Whether ``x`` names one clip by itself: a folder, a video file or an animated GIF path."""
    if not isinstance(x, (str, os.PathLike)):
        return False
    p = Path(x)
    if p.is_dir():
        return True
    suffix = p.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return True
    if suffix == ".gif" and p.is_file():
        try:
            with Image.open(p) as im:
                return getattr(im, "n_frames", 1) > 1
        except Exception:
            return False
    return False


def evenly(n: int, frames: int | None) -> list[int]:
    """Indices of ``frames`` frames spread evenly over ``n`` (all of them when ``frames`` is None or >= n)."""
    if frames is None or frames >= n:
        return list(range(n))
    if frames == 1:
        return [0]
    return [int(i * (n - 1) / (frames - 1) + 0.5) for i in range(frames)]


def load_frames(source, frames: int | None = None) -> list[Image.Image]:
    """A clip -> its frames as RGB PIL images, ``frames`` of them spread evenly (None: all).

    ``source``: a list/tuple of pictures (paths, PIL images, arrays), a folder of frame files (read
    in name order), an animated GIF, or a video file (PyAV). Refused with an :class:`InputError` or
    :class:`ImageError` saying what to pass: no frames, frames of different sizes, an unreadable
    video, a video without PyAV.
    """
    if frames is not None and (not isinstance(frames, int) or isinstance(frames, bool) or frames < 1):
        raise InputError(f"frames must be a positive integer (how many frames to read), got {frames!r}")
    if isinstance(source, (list, tuple)):
        pictures = [load_image(x) for x in source]
        pictures = [pictures[i] for i in evenly(len(pictures), frames)]
    elif isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not files:
                raise InputError(f"the folder {p} holds no frames ({', '.join(IMAGE_EXTENSIONS)} files); "
                                 "put the clip's frames there, named in order (frame_000.png, ...)")
            pictures = [load_image(files[i]) for i in evenly(len(files), frames)]
        elif p.suffix.lower() in VIDEO_EXTENSIONS:
            pictures = _video(p, frames)
        elif p.suffix.lower() == ".gif" and p.is_file():
            pictures = _gif(p, frames)
        else:
            pictures = [load_image(p)]  # one picture: a clip of one frame (load_image says what is wrong)
    else:
        pictures = [load_image(source)]
    if not pictures:
        raise InputError("the clip has no frames; give a list of pictures, a folder of frames or a video file")
    sizes = sorted({im.size for im in pictures})
    if len(sizes) > 1:
        raise InputError(f"the frames of one clip must share one size, got {sizes}; resize them alike first")
    return pictures


def _gif(path: Path, frames: int | None) -> list[Image.Image]:
    try:
        with Image.open(path) as im:
            all_frames = [load_image(f.convert("RGBA")) for f in ImageSequence.Iterator(im)]
    except Exception as exc:
        raise ImageError(f"could not read the frames of {path}: {exc}") from None
    return [all_frames[i] for i in evenly(len(all_frames), frames)]


def _video(path: Path, frames: int | None) -> list[Image.Image]:
    if not path.is_file():
        raise ImageError(f"the video file {path} does not exist; check the path")
    if av is None:
        raise InputError(f"reading the video file {path.name} needs PyAV: pip install \"unio[video]\" "
                         "(or give the clip as a folder of frames or an animated GIF)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ImageError(f"{path} holds no video stream; give a video file, a folder of frames or a GIF")
            decoded = []
            for frame in container.decode(video=0):
                decoded.append(frame.to_ndarray(format="rgb24"))
                if len(decoded) > MAX_FRAMES_READ:
                    raise InputError(f"{path.name} has more than {MAX_FRAMES_READ} frames; cut the clip first "
                                     "(e.g. ffmpeg -ss START -t SECONDS) or give a folder of frames")
    except (InputError, ImageError):
        raise
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise ImageError(f"could not decode the video {path}: {exc}; check that it is a video file "
                         "FFmpeg reads, or give its frames as a folder") from None
    if not decoded:
        raise ImageError(f"the video {path} has no frames")
    return [Image.fromarray(np.ascontiguousarray(decoded[i])) for i in evenly(len(decoded), frames)]
