"""Reading a clip: lists of pictures, folders of frames, animated GIFs, video files (PyAV)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unio.data import frames as frames_mod
from unio.data.frames import evenly, is_clip_source, load_frames
from unio.errors import ImageError, InputError
from unio.tasks.inputs import several_image_items


def _frame(v, size=(40, 30)):
    return Image.fromarray(np.full((size[1], size[0], 3), v, np.uint8))


def test_evenly_spread_indices():
    assert evenly(10, 4) == [0, 3, 6, 9]
    assert evenly(3, 8) == [0, 1, 2] and evenly(5, None) == list(range(5)) and evenly(7, 1) == [0]


def test_folder_gif_and_list(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(6):
        _frame(i * 40).save(folder / f"frame_{i:03d}.png")
    (folder / "notes.txt").write_text("not a frame")
    got = load_frames(folder, 3)
    assert [int(np.asarray(f)[0, 0, 0]) for f in got] == [0, 120, 200]
    gif = tmp_path / "clip.gif"
    _frame(0).save(gif, save_all=True, append_images=[_frame(v) for v in (80, 160, 240)], duration=100)
    assert is_clip_source(gif) and is_clip_source(folder) and not is_clip_source(folder / "frame_000.png")
    assert [int(np.asarray(f)[0, 0, 0]) for f in load_frames(gif)] == [0, 80, 160, 240]
    assert len(load_frames([_frame(1), _frame(2), _frame(3)], 2)) == 2


def test_video_file(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    got = load_frames(path, 4)
    assert len(got) == 4 and got[0].size == (64, 48)
    means = [float(np.asarray(f).mean()) for f in got]
    assert means == sorted(means) and abs(means[-1] - 180) < 6  # frames 0, 3, 6, 9 in order


def test_bad_clips(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no frames"):
        load_frames(tmp_path / "empty")
    with pytest.raises(InputError, match="share one size"):
        load_frames([_frame(0), _frame(0, (20, 20))])
    with pytest.raises(InputError, match="positive integer"):
        load_frames([_frame(0)], 0)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    if frames_mod.av is not None:
        with pytest.raises(ImageError, match="could not decode the video"):
            load_frames(bad)
    monkeypatch.setattr(frames_mod, "av", None)
    with pytest.raises(InputError, match=r'pip install "unio\[video\]"'):
        load_frames(bad)


def test_items_of_several_images(tmp_path):
    one, batch = several_image_items([_frame(1), _frame(2)], 2)
    assert not batch and len(one) == 1 and len(one[0]) == 2
    many, batch = several_image_items([[_frame(1), _frame(2)], [_frame(3), _frame(4)]], 2)
    assert batch and [len(x) for x in many] == [2, 2]
    clip, batch = several_image_items([_frame(v) for v in range(8)], None, frames=4)
    assert not batch and len(clip[0]) == 4
    with pytest.raises(InputError, match="empty list"):
        several_image_items([], 2)
