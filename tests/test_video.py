"""Video: moving-shapes / moving-mnist data, the video GAN and its frame-difference discriminator, video
diffusion on the image samplers, the clip metrics, and the CLI with tiny configs."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, gen, run_cli

from aigc.config import data_config
from aigc.data import load_dataset, shapes
from aigc.data import video as vd
from aigc.metrics.video import clip_metrics
from aigc.models.unet import UNet
from aigc.models.video import VideoDiscriminator, VideoGANConfig, VideoGenerator, frame_differences
from aigc.recipes.video import VideoDiffusionConfig as DiffusionConfig

VOCAB = list(vd.VOCAB)


def shape_clips(n=200, frames=16, seed=0):
    return vd.make_shape_clips(n, torch.Generator().manual_seed(seed), frames)


# ---------------------------------------------------------------- data
def test_moving_shapes_velocity_bounce_and_start():
    clip = shape_clips(400, frames=40)                 # long enough that most clips bounce
    a = clip["attrs"]
    cx, cy = vd.shape_clip_centres(a, 40)
    step = vd.STEPS[a["direction"]].float()
    dx, dy = cx.diff(dim=1), cy.diff(dim=1)
    assert ((dx.abs() + dy.abs()) == 1).all()                        # exactly 1 px per frame, along one axis
    assert (dx[:, :2] == step[:, :1]).all() and (dy[:, :2] == step[:, 1:]).all()   # first two moves as captioned
    assert cx.min() >= vd.LO and cx.max() <= vd.HI and cy.min() >= vd.LO and cy.max() <= vd.HI
    flips = (dx[:, 1:] * dx[:, :-1] < 0) | (dy[:, 1:] * dy[:, :-1] < 0)
    assert flips.any(1).float().mean() > 0.5                        # bounces happen ...
    at = torch.where(flips)                                         # ... and only at the border
    pos = torch.where(step[at[0], 0] != 0, cx[at[0], at[1] + 1], cy[at[0], at[1] + 1])
    assert ((pos == vd.LO) | (pos == vd.HI)).all()
    v = clip["video"]
    assert v.shape == (400, 3, 40, 32, 32) and v.dtype == torch.uint8
    fg = (v.max(1).values > 0).flatten(2).sum(2)                    # the shape is whole in every frame
    assert (fg == fg[:, :1]).all()


def test_moving_shapes_captions_and_detector():
    clip = shape_clips(300)
    a = clip["attrs"]
    for cap, c, s, d in zip(clip["caption"], a["color"].tolist(), a["shape"].tolist(), a["direction"].tolist()):
        assert cap == f"a {shapes.COLOR_NAMES[c]} {shapes.SHAPES[s]} moving {vd.DIRECTIONS[d]}"
        assert vd.parse_clip_caption(cap) == {"color": c, "shape": s, "direction": d}
    dropped = vd.shape_clip_captions(a, dropout=1.0)
    assert set(dropped) == {"a shape"}
    det = vd.detect_shape_clips(clip["video"])
    assert (det["direction"] == a["direction"]).all()
    assert (det["shape"] == a["shape"][:, None]).all() and (det["color"] == a["color"][:, None]).all()
    m = clip_metrics(det, {k: a[k] for k in ("color", "shape", "direction")})
    assert m["frame_accuracy"] == m["direction_accuracy"] == m["temporal_consistency"] == m["prompt_accuracy"] == 1.0
    assert m["motion_smoothness"] == 0.0 and m["mean_speed"] == 1.0


def test_clip_metrics_catch_broken_clips():
    clip = shape_clips(8)
    a = clip["attrs"]
    v = clip["video"].clone()
    v[0, :, 8:] = v[0, :, 8:, :, :].roll(1, dims=0)                 # clip 0: colors swap channels half-way
    v[1] = v[1, :, :1].expand_as(v[1])                              # clip 1: frozen (no motion)
    det = vd.detect_shape_clips(v)
    req = {k: a[k] for k in ("color", "shape", "direction")}
    m = clip_metrics(det, req)
    assert det["direction"][1] == -1
    assert m["temporal_consistency"] <= 7 / 8 and m["direction_accuracy"] <= 7 / 8 and m["prompt_accuracy"] <= 6 / 8
    assert m["axis_accuracy"] == m["direction_accuracy"]             # the frozen clip is on no axis
    v[2] = v[2].flip(1).clone()                                     # clip 2 runs backwards: same axis
    assert clip_metrics(vd.detect_shape_clips(v), req)["axis_accuracy"] == m["axis_accuracy"]
    v[2] = v[2].transpose(-1, -2).clone()                           # and now mirrored: the other axis
    assert clip_metrics(vd.detect_shape_clips(v), req)["axis_accuracy"] == m["axis_accuracy"] - 1 / 8


def test_clip_metrics_read_past_specks_of_noise_and_count_them():
    clip = shape_clips(8)
    a = clip["attrs"]
    req = {k: a[k] for k in ("color", "shape", "direction")}
    v = clip["video"].clone()
    assert clip_metrics(vd.detect_shape_clips(v), req)["stray_share"] == 0.0
    cx = vd.detect_shape_clips(v)["cx"]                               # (N, T)
    x = torch.where(cx < 16, 31, 0)                                  # the border farthest from the shape
    n, t = torch.meshgrid(torch.arange(8), torch.arange(0, 16, 2), indexing="ij")   # every other frame
    v[n, :, t, 0, x[n, t]] = 120
    m = clip_metrics(vd.detect_shape_clips(v), req)
    assert m["stray_share"] == 0.5
    assert m["frame_accuracy"] == m["direction_accuracy"] == m["temporal_consistency"] == 1.0
    strict = clip_metrics(vd.detect_shape_clips(v, component=False), req)
    assert strict["temporal_consistency"] < 1.0 and strict["direction_accuracy"] < 1.0


def test_video_batcher_resumes_exactly():
    data = load_dataset(data_config("moving-shapes", num_eval=8, frames=6))
    b1 = vd.VideoBatcher(data, 4, seed=3)
    next(b1)
    state = b1.state_dict()
    want = next(b1)
    b2 = vd.VideoBatcher(data, 4, seed=3)
    b2.load_state_dict(state)
    got = next(b2)
    assert torch.equal(want["video"], got["video"]) and want["caption"] == got["caption"]
    assert want["video"].shape == (4, 3, 6, 32, 32) and 0 <= want["video"].min() and want["video"].max() <= 1


def test_moving_mnist(mnist_dir):
    data = load_dataset(data_config("moving-mnist", dir=str(mnist_dir), num_eval=6, frames=10, image_size=48,
                                   digits=2))
    assert data.video_shape == (1, 10, 48, 48)
    clip = data.make(20, torch.Generator().manual_seed(0))
    speed = clip["velocity"].norm(dim=-1)
    assert speed.min() >= 2 and speed.max() <= 4
    pos = clip["positions"]                                          # (n, D, T, 2) top-left corners
    assert pos.min() >= 0 and pos.max() <= 48 - 28
    digits = data.digits.train.images
    for i in range(3):                                               # digits combined by max
        want = torch.zeros(10, 48, 48, dtype=torch.uint8)
        for d in range(2):
            img = digits[clip["index"][i, d], 0]
            for t in range(10):
                x, y = pos[i, d, t].tolist()
                want[t, y:y + 28, x:x + 28] = torch.maximum(want[t, y:y + 28, x:x + 28], img)
        assert torch.equal(clip["video"][i, 0], want)
    t = torch.arange(30.)
    path = vd.bounce(torch.tensor([1.0]), torch.tensor([3.0]), t, 0, 20)[0]
    assert path.min() >= 0 and path.max() <= 20 and path[:7].tolist() == [1, 4, 7, 10, 13, 16, 19]
    assert path[7] == 18                                             # 22 reflected at 20
    crops = vd.digit_crops(clip["video"], 2)
    assert crops.shape == (20, 10, 2, 1, 28, 28)


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("shape", [(3, 16, 32, 32), (1, 8, 64, 64), (3, 12, 16, 16), (3, 5, 32, 32)])
def test_generator_and_discriminators_shapes(shape):
    cfg = VideoGANConfig(g_width=8, d_width=8, z_dim=16, cond="text", cond_dim=16, text_vocab=VOCAB)
    G, D = VideoGenerator(cfg, shape), VideoDiscriminator(cfg, shape)
    y = torch.randint(1, len(VOCAB), (2, 5))
    x = G(torch.randn(2, 16), y)
    assert x.shape == (2, *shape) and x.abs().max() <= 1
    out = D(x, y)
    assert set(out) == {"clip", "diff"} and out["clip"].shape == out["diff"].shape == (2,)


def test_frame_difference_path():
    shape = (3, 8, 16, 16)
    cfg = VideoGANConfig(d_width=8, cond="none", frame_diff=1.0)
    D = VideoDiscriminator(cfg, shape).eval()        # eval: spectral norm's power iteration stays put
    x = torch.randn(2, *shape)
    assert torch.equal(frame_differences(x)[:, :, 2], x[:, :, 3] - x[:, :, 2])
    static = torch.randn(2, 3, 1, 16, 16).expand(2, 3, 8, 16, 16)
    a, b = D(x), D(x + static)                      # the same motion on a different background
    assert torch.allclose(a["diff"], b["diff"], atol=1e-5) and not torch.allclose(a["clip"], b["clip"])
    assert set(VideoDiscriminator(VideoGANConfig(d_width=8, cond="none", frame_diff=0.0), shape)(x)) == {"clip"}


def test_video_unet_mixes_frames_and_keeps_shape():
    cfg = DiffusionConfig(width=16, mults=[1, 2], patch=2, groups=4, heads=2, cond="text", text_vocab=VOCAB)
    net = UNet(cfg, (3, 16, 16), frames=6)
    for p in net.parameters():                      # leave the zero-initialised layers' identity start
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 6, 16, 16)
    c = torch.randint(1, len(VOCAB), (2, 5))
    t = torch.tensor([10, 500])
    out = net(x, t, c)
    assert out.shape == x.shape
    x2 = x.clone()
    x2[:, :, 0] += 1                                # change frame 0 only: later frames see it (temporal layers)
    assert not torch.allclose(net(x2, t, c)[:, :, 5], out[:, :, 5])


def test_frame_map_gives_each_frame_its_own_caption_map():
    """model.frame_map: the caption channels appended to the input are a function of the caption and the
    frame's index in the clip (a window's frames get their indices' maps); without it, one map for all frames."""
    seen = {}
    for frame_map in (False, True):
        cfg = DiffusionConfig(width=16, mults=[1, 2], patch=2, groups=4, heads=2, cond="text", text_vocab=VOCAB,
                              cond_map=3, coords=True, frame_map=frame_map)
        net = UNet(cfg, (3, 16, 16), frames=4)
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.5)
        maps = []
        net.inp.register_forward_hook(lambda mod, args, out: maps.append(args[0][:, -3:].detach()))
        c = torch.randint(1, len(VOCAB), (2, 5))
        x, t = torch.randn(2, 3, 4, 16, 16), torch.tensor([999, 999])
        net(x, t, c)
        net(x, t, c, torch.tensor([[4, 5, 6, 7], [0, 1, 2, 3]]))           # clip 0 as frames 4..7 of a longer clip
        net(x, t, c.flip(0))
        m = [a.view(2, 4, 3, 8, 8) for a in maps]                          # (B, T, cond_map, 8, 8)
        differs = lambda a, b: (a - b).abs().max().item() > 1e-3           # noqa: E731
        assert differs(m[0][0], m[2][0])                                   # another caption, another map
        assert differs(m[0][:, 0], m[0][:, 1]) == frame_map                # frame 0's map vs frame 1's
        assert differs(m[0][0], m[1][0]) == frame_map                      # frames 0..3 vs 4..7
        assert not differs(m[0][1], m[1][1])                               # the same indices, the same maps
        seen[frame_map] = sum(p.numel() for p in net.parameters())
    assert seen[True] == seen[False] + 16 * 64 + 64                        # one Linear(width, 4 * width) more


def test_separated_and_dynamic_temporal_convs_reach_the_next_frames_neighbours():
    """temporal_conv = separated or dynamic (depthwise 3x3x3 kernels): what is at one pixel of frame 0 reaches
    the neighbouring pixels of frame 1 in one layer; the 1D temporal convolution only reaches the same pixel."""
    from aigc.models.unet import TemporalConv

    for mode in ("1d", "separated", "dynamic"):
        layer = TemporalConv(4, 2, mode == "separated", 6 if mode == "dynamic" else 0)
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.3)
        layer.norm = torch.nn.Identity()              # its statistics would carry the change to every pixel
        x = torch.randn(2 * 3, 4, 8, 8)               # B = 2 clips of 3 frames
        e = torch.randn(2, 6)
        x2 = x.clone()
        x2[0, :, 4, 4] += 1                           # clip 0, frame 0, pixel (4, 4)
        d = (layer(x2, 3, e) - layer(x, 3, e)).abs().sum(1)  # (B*T, H, W)
        assert d[1, 4, 4] > 0 and d[3:].sum() == 0    # frame 1 of clip 0 sees it; clip 1 does not
        assert (d[1, 4, 5] > 0) == (mode != "1d") and (d[1, 5, 5] > 0) == (mode != "1d")


def test_dynamic_temporal_conv_kernels_follow_each_clips_embedding():
    """temporal_conv = dynamic: each clip's depthwise kernels are made from its own embedding (the caption), so
    the same features give another output for another embedding, clip by clip; the branch starts as a no-op
    (its 1x1x1 mix is zero) and a missing embedding is an error, not a silent 1D convolution."""
    from aigc.models.unet import TemporalConv

    layer = TemporalConv(4, 2, dynamic=6)
    x = torch.randn(2 * 3, 4, 8, 8)
    e = torch.randn(2, 6)
    plain = TemporalConv(4, 2)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k.startswith(("norm", "conv"))})
    assert torch.allclose(layer(x, 3, e), plain(x, 3))                  # zero mix: the 1D convolution alone
    torch.nn.init.normal_(layer.mix.weight, std=0.3)
    e2 = e.clone()
    e2[1] += 1                                                         # clip 1 gets another embedding
    d = (layer(x, 3, e2) - layer(x, 3, e)).abs().flatten(1).sum(1)
    assert d[:3].sum() == 0 and (d[3:] > 0).all()
    with pytest.raises(ValueError, match="embedding"):
        layer(x, 3)


def test_depthwise_per_clip_equals_a_grouped_conv3d():
    """The dynamic branch's three per-frame-offset 2D convolutions give the grouped 3D convolution they replace
    (each clip convolved with its own kernels), for several clip counts and frame counts, in value and gradient."""
    from aigc.models.unet import depthwise_per_clip

    torch.manual_seed(0)
    for B, C, T, H, W in [(2, 4, 3, 8, 8), (1, 3, 5, 6, 7), (3, 2, 1, 4, 4)]:
        x = torch.randn(B * T, C, H, W, requires_grad=True)
        k = torch.randn(B, C, 3, 3, 3, requires_grad=True)
        got = depthwise_per_clip(x, k, T)
        v = x.view(B, T, C, H, W).transpose(1, 2).reshape(1, B * C, T, H, W)
        ref = torch.nn.functional.conv3d(v, k.reshape(B * C, 1, 3, 3, 3), padding=1, groups=B * C)
        ref = ref.view(B, C, T, H, W).transpose(1, 2).reshape(B * T, C, H, W)
        assert torch.allclose(got, ref, atol=1e-5)
        g = torch.randn_like(ref)
        gx, gk = torch.autograd.grad((got * g).sum(), (x, k))
        rx, rk = torch.autograd.grad((ref * g).sum(), (x, k))
        assert torch.allclose(gx, rx, atol=1e-4) and torch.allclose(gk, rk, atol=1e-4)


@pytest.mark.parametrize("coords", [False, True])
def test_motion_generator_image_discriminator_and_word_classifier(coords):
    """g_arch = motion makes clips at the full frame rate from a content and a per-frame motion code (with and
    without coordinate channels and conditional BatchNorm); the image
    discriminator sees image_frames frames of each clip; the clip discriminator's word classifier has a logit
    per vocabulary id."""
    from aigc.models.video import some_frames

    shape = (3, 8, 32, 32)
    cfg = VideoGANConfig(g_width=8, d_width=8, z_dim=16, cond="text", cond_dim=16, text_vocab=VOCAB, g_arch="motion",
                         motion_dim=8, g_coords=coords, g_cbn=coords, image_d=1.0, image_frames=3, aux_words=1.0)
    G, D = VideoGenerator(cfg, shape), VideoDiscriminator(cfg, shape)
    y = torch.randint(1, len(VOCAB), (2, 5))
    x = G(torch.randn(2, 16), y)
    assert x.shape == (2, *shape) and x.abs().max() <= 1
    out = D(x, y)
    assert set(out) == {"clip", "diff", "image", "words"}
    assert out["image"].shape == (6,) and out["words"].shape == (2, len(VOCAB) + 1)
    clips = torch.arange(2 * 8, dtype=torch.float32).view(2, 1, 8, 1, 1).expand(2, 3, 8, 4, 4)
    frames = some_frames(clips, 3, torch.Generator().manual_seed(0))[:, 0, 0, 0]
    assert len(set(frames[:3].tolist())) == 3 and all(0 <= f < 8 for f in frames[:3])        # clip 0's frames
    assert all(8 <= f < 16 for f in frames[3:])                                                 # clip 1's


@pytest.mark.parametrize("kt", [1, 3])
def test_generator_frame_kernel_sets_which_frames_mix(kt):
    """g_frame_kernel = k: each frame of G's output depends on k latent frames (1: a 2D generator per frame)."""
    cfg = VideoGANConfig(g_width=8, z_dim=16, cond="none", g_arch="motion", motion_dim=8, g_frame_kernel=kt)
    G = VideoGenerator(cfg, (3, 8, 32, 32)).eval()
    h = torch.randn(1, G.c0, 8, 4, 4)
    h2 = h.clone()
    h2[:, :, 4] += 1.0
    with torch.no_grad():
        changed = (G.net(h2) - G.net(h)).abs().flatten(3).amax((0, 1, 3)) > 1e-6        # per output frame
    layers = 3                                                             # 4 -> 32 px: each mixes kt frames
    reach = layers * (kt // 2)
    assert changed.tolist() == [abs(t - 4) <= reach for t in range(8)]


def test_image_discriminator_width_and_convs():
    """image_d_width / image_d_convs size the image discriminator alone (the clip discriminator keeps d_width)."""
    import torch.nn as nn

    from aigc.errors import AigcError

    def convs(net):
        return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]

    shape = (3, 8, 32, 32)
    base = VideoDiscriminator(VideoGANConfig(d_width=8, image_d=1.0, cond="none"), shape)
    wide = VideoDiscriminator(VideoGANConfig(d_width=8, image_d=1.0, cond="none", image_d_width=16, image_d_convs=1),
                              shape)
    assert convs(base.image)[0].out_channels == 8 and convs(wide.image)[0].out_channels == 16
    assert len(convs(wide.image)) == len(convs(base.image)) + 3              # one more per resolution: 32, 16, 8
    assert [c.weight.shape for c in convs(wide.clip)] == [c.weight.shape for c in convs(base.clip)]
    assert wide(torch.rand(2, *shape) * 2 - 1)["image"].shape == (8,)
    with pytest.raises(AigcError, match=r"image_d_width \(0 = d_width\), image_d_convs, .* must be >= 0"):
        _tiny_video_gan("image_d_convs=-1")


def test_pooled_discriminators_sum_over_space():
    """d_pool / image_d_pool: the clip discriminators' heads read (channels x frames left), the image
    discriminator's its channels; the convolutions are the flattened ones' (same seed, same weights)."""
    shape, kw = (3, 8, 32, 32), dict(d_width=8, image_d=1.0, frame_diff=1.0, cond="text", text_vocab=["a", "red"],
                                     aux_words=1.0, image_words=1.0)
    torch.manual_seed(0)
    flat = VideoDiscriminator(VideoGANConfig(**kw), shape).eval()
    torch.manual_seed(0)
    pooled = VideoDiscriminator(VideoGANConfig(**kw, d_pool=True, image_d_pool=True), shape).eval()
    x = torch.rand(2, *shape) * 2 - 1
    h = pooled.clip.features(x)                     # 32 channels, 8 frames halved twice (to 2), 4 x 4 summed
    assert h.shape == (2, 32 * 2) and torch.allclose(h, flat.clip.features(x).view(2, 32, 2, 16).sum(3).flatten(1),
                                                      atol=1e-5)
    assert pooled.clip.classify.in_features == 64 and pooled.image.classify.in_features == 32
    assert pooled.diff.out.in_features < flat.diff.out.in_features
    out = pooled(x, torch.tensor([[1, 2], [1, 0]]))
    assert out["clip"].shape == (2,) and out["image"].shape == (8,) and out["image_words"].shape == (8, 3)


def test_place_is_a_convolution_of_each_frame_with_its_clips_sprite():
    import torch.nn.functional as F

    from aigc.models.video import place

    for k in (8, 16):
        maps, sprite = torch.rand(3, 5, 32, 32), torch.rand(3, 2, k, k)
        full = F.conv_transpose2d(maps.transpose(0, 1), sprite, padding=k // 2 - 1, groups=3)  # (T, B * C, ...)
        ref = full[:, :, :32, :32].reshape(5, 3, 2, 32, 32).permute(1, 2, 0, 3, 4)
        assert torch.allclose(place(maps, sprite), ref, atol=1e-4)


def test_sprite_generator_moves_one_sprite():
    """g_arch = sprite: a where-map peaked at one pixel per frame, moving 1 px right a frame, gives frames that are
    one sprite shifted 1 px right a frame; the sprite depends on the caption."""
    import torch.nn as nn

    from aigc.models.video import SpriteVideoGenerator, video_generator

    cfg = VideoGANConfig(g_arch="sprite", g_width=8, z_dim=8, motion_dim=8, cond="text", cond_dim=8,
                         text_vocab=["a", "red", "blue", "circle"])
    G = video_generator(cfg, (3, 4, 32, 32)).eval()
    assert isinstance(G, SpriteVideoGenerator)
    peak = torch.full((2, 1, 4, 32, 32), -1.0)
    for t in range(4):
        peak[:, 0, t, 12, 10 + t] = 1.0

    class Where(nn.Module):
        def forward(self, z, y):
            return peak

    G.where = Where()
    y = torch.tensor([[1, 2, 4], [1, 3, 4]])
    with torch.no_grad():
        x = G(torch.randn(2, 8), y)
    assert x.shape == (2, 3, 4, 32, 32) and x.min() > -1 - 1e-4 and x.max() < 1 + 1e-4     # FFT round-off
    for t in range(1, 4):
        assert torch.allclose(x[:, :, t, :, t:], x[:, :, 0, :, :32 - t], atol=1e-4)
    assert not torch.allclose(x[0], x[1], atol=1e-3)                    # red and blue: different sprites


def test_splat_draws_points_bilinearly():
    from aigc.models.video import splat

    maps = splat(torch.tensor([[[3.0, 10.0], [3.5, 10.0], [31.0, 0.0]]], requires_grad=True), 32, 32)
    assert maps.shape == (1, 3, 32, 32) and torch.allclose(maps.sum((2, 3)), torch.ones(1, 3))
    assert maps[0, 0, 10, 3] == 1 and maps[0, 1, 10, 3] == maps[0, 1, 10, 4] == 0.5 and maps[0, 2, 0, 31] == 1


def test_object_windows_centre_each_frames_shape():
    from aigc.data.video import make_shape_clips
    from aigc.models.video import object_windows

    clips = make_shape_clips(8, torch.Generator().manual_seed(0), 4)["video"]
    frames = (clips.float() / 127.5 - 1).transpose(1, 2).flatten(0, 1).requires_grad_()   # (32, 3, 32, 32)
    win = object_windows(frames, 16)
    fore = win.amax(1) > -0.2
    for axis in (fore.any(2), fore.any(1)):                  # the 8 px shape's box is the window's pixels 4..11
        assert axis[:, 4:12].all() and not axis[:, :4].any() and not axis[:, 12:].any()
    assert torch.equal(object_windows(-torch.ones(1, 3, 32, 32), 16), -torch.ones(1, 3, 16, 16))
    win.sum().backward()                                     # every shape pixel reaches its window once
    shape_px = (frames.amax(1, keepdim=True) > -0.2).expand_as(frames)
    assert (frames.grad[shape_px] == 1).all() and frames.grad.max() == 1


def test_point_sprite_stays_inside_the_frame():
    from aigc.models.video import SpriteVideoGenerator, VideoGANConfig

    cfg = VideoGANConfig(g_arch="sprite", sprite_where="point", sprite_px=8, cond="none", g_width=8, z_dim=8)
    g = SpriteVideoGenerator(cfg, (3, 4, 32, 32)).eval()
    with torch.no_grad():
        g.point.weight.zero_()
        for corner in ([-50.0, -50.0], [50.0, 50.0], [-50.0, 50.0]):     # points pushed to the frame's corners
            g.point.bias.copy_(torch.tensor(corner))
            lit = (g(torch.randn(2, 8)) > -1 + 1e-4).sum((1, 3, 4))        # sprite pixels in each frame
            assert (lit == 3 * 8 * 8).all()                               # the whole 8 x 8 sprite, never cut


def test_reflect_folds_a_line_into_the_frame_as_a_bounce():
    from aigc.data.video import bounce, reflect

    u = torch.linspace(-30, 60, 181, requires_grad=True)
    out = reflect(u, torch.tensor(24.0))
    assert out.min() >= 0 and out.max() <= 24
    assert torch.allclose(out, bounce(torch.zeros(1), torch.ones(1), u.detach(), 0, 24)[0])   # the data's bounce
    out.sum().backward()
    assert (u.grad.abs() == 1).all()                                      # never saturates


def test_line_sprite_moves_at_its_velocity_and_bounces():
    from aigc.models.video import SpriteVideoGenerator, VideoGANConfig

    cfg = VideoGANConfig(g_arch="sprite", sprite_where="line", sprite_px=8, cond="none", g_width=8, z_dim=8)
    g = SpriteVideoGenerator(cfg, (3, 16, 32, 32)).eval()
    last = g.line[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0]))                # start at the middle, 1 px right a frame
        lit = (g(torch.randn(1, 8))[0].amax(0) > -1 + 1e-4).float()        # (T, H, W)
    cols = [torch.nonzero(f.amax(0)).flatten() for f in lit]
    left = torch.tensor([int(c.min()) for c in cols])
    assert all(len(c) == 8 for c in cols)                                 # a whole 8 px sprite in every frame
    assert left.tolist() == [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 23, 22, 21]   # bounces at 24


def test_subpixel_shift_moves_each_clip_under_a_pixel_in_training_only():
    from aigc.models.video import VideoDiscriminator, VideoGANConfig, subpixel_shift

    x = -torch.ones(8, 3, 4, 16, 16)
    x[..., 5:9, 6:10] = 1
    out = subpixel_shift(x)
    assert torch.allclose((out + 1).sum((1, 2, 3, 4)), (x + 1).sum((1, 2, 3, 4)))   # no light lost or made
    assert torch.equal(out[:, :, :1].expand_as(out), out)                           # one shift for all frames
    assert not torch.equal(out[0], out[1]) and out[..., :5, :].max() == -1          # per clip, right and down
    cfg = VideoGANConfig(d_subpixel=True, cond="none", d_width=4, spectral_norm=False)
    d = VideoDiscriminator(cfg, (3, 4, 16, 16))
    torch.manual_seed(0)
    a = d(x)["clip"]
    torch.manual_seed(1)
    assert not torch.equal(a, d(x)["clip"])
    d.eval()
    assert torch.equal(d(x)["clip"], d(x)["clip"])


@pytest.mark.parametrize("where", ["map", "point", "line", "argmax", "argmax_line"])
def test_sprite_generator_trains_in_the_recipe(where):
    from aigc.errors import AigcError
    from aigc.train.trainer import Optimizers

    recipe, data = _tiny_video_gan("g_arch=sprite", "sprite_px=8", "image_d=1.0", f"sprite_where={where}",
                                   "crop_d=1.0", "crop_words=1.0")
    batch = next(iter(recipe.make_batcher(data, recipe.cfg)))
    out = recipe.train_step(batch, Optimizers(recipe.param_groups(), recipe.cfg.train, torch.device("cpu")))
    assert all(torch.isfinite(torch.as_tensor(v)) for v in out.values()) and "d_crop_real" in out
    with pytest.raises(AigcError, match="sprite_px"):
        _tiny_video_gan("g_arch=sprite", "sprite_px=12")
    with pytest.raises(AigcError, match="crop_px"):
        _tiny_video_gan("crop_d=1.0", "crop_px=8")


class Const(torch.nn.Module):
    """A module that returns v whatever it is given: stands in for a generator's part in a test."""

    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, *args):
        return self.v


def test_argmax_draws_the_sprite_where_its_whole_canvas_is_in_the_frame():
    """sprite_where = "argmax": a where-map peaked at a corner pixel puts the sprite's canvas flush in that corner,
    never half outside the frame (the expected position is scaled to the canvas's span, as point and line do)."""
    recipe, _ = _tiny_video_gan("g_arch=sprite", "sprite_px=8", "sprite_where=argmax")
    G, (t, h, w) = recipe.G.eval(), recipe.G.shape[1:]
    G.sprite = Const(torch.ones(1, 3, 8, 8))
    for row, col in ((0, 0), (h - 1, w - 1), (0, w - 1)):
        logits = torch.full((1, 1, t, h, w), -1.0)
        logits[..., row, col] = 1.0
        G.where = Const(logits)
        clip = G(torch.zeros(1, recipe.cfg.model.z_dim), recipe._y(["a red circle moving up"]))
        lit = torch.zeros(h, w, dtype=torch.bool)
        lit[min(row, h - 8):min(row, h - 8) + 8, min(col, w - 8):min(col, w - 8) + 8] = True
        assert torch.allclose(clip[0, :, :, lit], torch.ones(()), atol=1e-3)
        assert torch.allclose(clip[0, :, :, ~lit], -torch.ones(()), atol=1e-3)


def test_argmax_line_draws_the_sprite_on_the_best_line_through_the_maps_points():
    """sprite_where = "argmax_line": where-maps peaked on a line with one frame off it -> a sprite that moves by the
    same step every frame (the least-squares line), where "argmax" follows the outlier."""
    xs = {}
    for where in ("argmax", "argmax_line"):
        recipe, _ = _tiny_video_gan("g_arch=sprite", "sprite_px=8", f"sprite_where={where}")
        G, (t, h, w) = recipe.G.eval(), recipe.G.shape[1:]
        G.sprite = Const(torch.ones(1, 3, 8, 8))
        logits = torch.full((1, 1, t, h, w), -1.0)
        for f in range(t):
            logits[0, 0, f, 12, 4 + 2 * f + (8 if f == 1 else 0)] = 1.0
        G.where = Const(logits)
        clip = (G(torch.zeros(1, recipe.cfg.model.z_dim), recipe._y(["a red circle moving up"]))[0, 0] + 1) / 2
        xs[where] = (clip.sum(1) * torch.arange(w)).sum(-1) / clip.sum((1, 2))      # the sprite's centre per frame
    steps = xs["argmax_line"].diff()
    assert torch.allclose(steps, steps[0], atol=1e-3) and steps[0] > 0
    assert not torch.allclose(xs["argmax"].diff(), xs["argmax"].diff()[0], atol=0.5)


def test_mismatch_shows_d_real_clips_with_another_clips_caption_as_fake():
    """mismatch > 0: the matching-aware discriminator (Reed et al. 2016) also sees the real clips with the batch's
    captions rolled by one, and learns to read them as fake."""
    from aigc.train.trainer import Optimizers

    recipe, data = _tiny_video_gan("mismatch=1.0")
    batch = next(iter(recipe.make_batcher(data, recipe.cfg)))
    seen, forward = [], recipe.D.forward
    recipe.D.forward = lambda x, y=None: seen.append((x, y)) or forward(x, y)
    recipe.train_step(batch, Optimizers(recipe.param_groups(), recipe.cfg.train, torch.device("cpu")))
    x, y = batch["video"] * 2 - 1, recipe._y(batch["caption"])
    wrong = [c for c in seen if torch.equal(c[0], x) and torch.equal(c[1], y.roll(1, 0))]
    assert len(seen) == 4 and len(wrong) == 1                    # real, fake, real with wrong captions; G's step
    wrong_logits = recipe.D(x, y.roll(1, 0))
    assert recipe.mismatch_loss(wrong_logits) > 0


def test_mismatched_captions_differ_in_one_word_or_are_rolled():
    from aigc.recipes.gan import mismatched

    y = torch.tensor([[1, 2, 3, 4, 0], [1, 5, 6, 7, 8], [1, 2, 6, 4, 0]])
    changed, rolled = mismatched(y)
    assert changed.all() and torch.equal(rolled, y.roll(1, 0))
    for _ in range(20):
        changed, wrong = mismatched(y, one_word=True)
        differ = (wrong != y).sum(1)
        assert (differ <= 1).all() and torch.equal(changed, differ == 1)
        assert ((wrong == y) | (wrong == y.roll(1, 0))).all() and (wrong[y == 0] == 0).all()   # padding stays
    assert mismatched(torch.tensor([1, 1, 2]))[0].tolist() == [True, False, True]         # labels: rolled


def _tiny_video_gan(*sets):
    from aigc.recipes import build_config, recipe_class

    cfg = build_config("video-gan", "moving-shapes", None,
                       ["num_eval=8", "frames=4", "g_width=8", "d_width=8", "z_dim=8",
                        "cond_dim=8", "batch_size=8", *sets], {})
    cls = recipe_class("video-gan")
    data = cls.load_data(cfg)
    return cls(cfg), data


def test_collapse_detector_warns_when_samples_ignore_their_noise(capsys):
    recipe, data = _tiny_video_gan("g_arch=motion")
    recipe._step = recipe.cfg.model.collapse_every       # readings before this step are logged, not judged
    batch = next(iter(recipe.make_batcher(data, recipe.cfg)))
    x, y = batch["video"] * 2 - 1, recipe._y(batch["caption"])
    recipe._check_diversity(x, y)
    healthy = recipe._diversity                           # an untrained G still spreads its clips by z
    with torch.no_grad():                                 # G's last layer zeroed: every clip is the same
        last = [m for m in recipe.G.net if isinstance(m, torch.nn.ConvTranspose3d)][-1]
        last.weight.zero_()
    for _ in range(2):
        recipe._check_diversity(x, y)
    assert recipe._diversity < 0.01 < healthy
    assert "mode collapse" in capsys.readouterr().err


def test_word_classifier_and_frame_difference_moments_losses():
    from aigc.train.trainer import Optimizers

    recipe, data = _tiny_video_gan("g_arch=motion", "aux_words=1", "frame_diff_mode=moments", "image_d=1")
    assert recipe.D.diff is None and recipe.D.image is not None      # moments: no frame-difference network
    y = recipe._y(["a red circle moving up", "a blue square moving left"])
    target = torch.zeros(2, len(recipe.vocab))
    target.scatter_(1, y, 1.0)
    right, wrong = {"words": 20 * (2 * target - 1)}, {"words": -20 * (2 * target - 1)}
    assert float(recipe.words(right, y)) < 1e-6 < 1.0 < float(recipe.words(wrong, y))
    assert float(recipe.words(right, y, named=False)) > 1.0          # words_fake: a sample should name no word
    recipe.cfg.model.image_words = 1.0                               # the image classifier: each frame, its caption
    frames = {"image_words": right["words"].repeat_interleave(3, 0)}
    assert float(recipe.words(frames, y)) < 1e-6 < 1.0 < float(recipe.words(frames, y.flip(0)))
    batch = next(iter(recipe.make_batcher(data, recipe.cfg)))
    out = recipe.train_step(batch, Optimizers(recipe.param_groups(), recipe.cfg.train, torch.device("cpu")))
    assert {"d_image_real", "d_image_fake", "g_loss"} <= set(out) and all(torch.isfinite(torch.as_tensor(v))
                                                                          for v in out.values())


def test_start_spread_of_clips():
    from aigc.metrics.video import start_spread

    attrs = vd.shape_clip_attributes(16, torch.Generator().manual_seed(0))
    attrs.update(color=torch.zeros(16, dtype=torch.long), shape=torch.zeros(16, dtype=torch.long),
                 direction=torch.ones(16, dtype=torch.long))
    spread = start_spread(vd.detect_shape_clips(vd.render_shape_clips(attrs, 4)))
    x0, y0 = attrs["x0"].double(), attrs["y0"].double()
    assert spread["start_spread_px"] == pytest.approx(float((x0.var(unbiased=False) + y0.var(unbiased=False)).sqrt()),
                                                      abs=0.6)
    assert spread["clips_with_a_start"] == 16 and spread["distinct_starts"] > 8
    same = {k: v[:1].repeat(16) for k, v in attrs.items()}
    one = start_spread(vd.detect_shape_clips(vd.render_shape_clips(same, 4)))
    assert one["start_spread_px"] == 0 and one["distinct_starts"] == 1


def test_video_diffusion_uses_the_image_samplers(monkeypatch):
    import aigc.recipes.diffusion as rd
    from aigc.recipes import build_config, recipe_class

    calls = []
    real = rd.run_sampler

    def spy(kind, fn, schedule, shape, *a, **k):
        calls.append((kind, shape))
        return real(kind, fn, schedule, shape, *a, **k)

    monkeypatch.setattr(rd, "run_sampler", spy)
    cfg = build_config("video-diffusion", "moving-shapes", None,
                       ["num_eval=4", "frames=4", "width=16", "groups=4", "heads=2", "sample_steps=2"], {})
    cls = recipe_class("video-diffusion")
    cls.load_data(cfg)
    out = gen(cls(cfg), num=3, prompt="a red circle moving up")
    assert out.videos.shape == (3, 4, 32, 32, 3) and out.prompts == ["a red circle moving up"] * 3
    assert calls == [("ddim", (3, 3, 4, 32, 32))]


def test_joint_image_video_training_cuts_frames_and_checks_its_setting(monkeypatch):
    """joint_images = k: the net sees the first B - k clips whole and one frame of each other clip as a
    1-frame clip; the loss weights every frame alike; and the setting is checked."""
    from aigc.errors import AigcError
    from aigc.recipes import build_config, recipe_class

    args = ["num_eval=4", "frames=4", "width=16", "groups=4", "heads=2", "batch_size=5", "joint_images=3"]
    cfg = build_config("video-diffusion", "moving-shapes", None, args, {})
    cls = recipe_class("video-diffusion")
    cls.check_config(cfg)
    data = cls.load_data(cfg)
    recipe = cls(cfg)
    batch = next(cls.make_batcher(data, cfg))
    shapes_seen = []
    net_forward = recipe.net.forward
    monkeypatch.setattr(recipe.net, "forward", lambda x, *a: shapes_seen.append(tuple(x.shape)) or net_forward(x, *a))

    class Opt:
        def update(self, name, loss):
            self.loss = loss

    out = recipe.train_step(batch, Opt())
    assert shapes_seen == [(2, 3, 4, 32, 32), (3, 3, 1, 32, 32)]
    want = (out["clip_loss"] * 2 * 4 + out["image_loss"] * 3) / (2 * 4 + 3)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    for bad, words in [(["joint_images=5"], ["joint_images", "batch_size - 1 (4)"]), (["joint_images=-1"],
                                                                                      ["joint_images"]),
                       (["train_frames=-1"], ["train_frames", ">= 0"]),
                       (["noise_corr=1"], ["noise_corr", "[0, 1)"]), (["schedule_shift=0"], ["schedule_shift", "> 0"]),
                       (["frame_map=true", "cond_map=0"], ["frame_map", "cond_map > 0"])]:
        with pytest.raises(AigcError) as e:
            cls.check_config(build_config("video-diffusion", "moving-shapes", None, args + bad, {}))
        assert all(w in str(e.value) for w in words), str(e.value)
    # image diffusion has no frames: each video-only option set there is an unknown key, not silently ignored
    for opt in ["joint_images=2", "noise_corr=0.5", "train_frames=4", "window_start0=0.5", "sample_window=8",
                "temporal_pos=\"relative\"", "temporal_conv=\"separated\"", "temporal_attention=false",
                'spacetime_attention="all"', "frame_map=true"]:
        with pytest.raises(AigcError, match="unknown config key") as e:
            build_config("diffusion", "shapes", None, [opt], {})
        assert opt.split("=")[0] in str(e.value)


def test_training_on_windows_passes_each_frames_index_in_the_clip(monkeypatch):
    """train_frames = k: every clip trains as k consecutive frames of it, with their indices in the whole
    clip; and frame_index 0..T-1 is what the net uses by default."""
    from aigc.recipes import build_config, recipe_class

    cfg = build_config("video-diffusion", "moving-shapes", None,
                       ["num_eval=4", "frames=6", "width=16", "groups=4", "heads=2", "batch_size=3",
                        "train_frames=2"], {})
    cls = recipe_class("video-diffusion")
    data = cls.load_data(cfg)
    recipe = cls(cfg)
    batch = next(cls.make_batcher(data, cfg))
    seen = []
    loss = recipe.core.loss

    def spy(x0, c, generator=None, weighted=False, frame_index=None):
        seen.append((x0, frame_index))
        return loss(x0, c, generator, weighted, frame_index)

    monkeypatch.setattr(recipe.core, "loss", spy)
    recipe.train_step(batch, type("Opt", (), {"update": lambda self, name, loss: None})())
    (x0, index), = seen
    assert x0.shape == (3, 3, 2, 32, 32) and index.shape == (3, 2)
    clips = batch["video"] * 2 - 1
    for i in range(3):
        assert torch.equal(x0[i], clips[i][:, index[i]]) and index[i, 1] == index[i, 0] + 1
    net = recipe.net
    torch.manual_seed(0)
    for p in net.parameters():                     # leave the zero-initialised start (output and frame embedding 0)
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 6, 32, 32)
    t = torch.tensor([5, 700])
    c = recipe.vocab.encode(["a red circle moving up"] * 2)
    # the same sums broadcast differently ((T, E) vs (B, T, E) positions): equal up to float rounding (~3e-8
    # on outputs of ~0.2, which allclose's default atol of 1e-8 failed for a third of the seeds)
    assert torch.allclose(net(x, t, c), net(x, t, c, torch.arange(6).expand(2, 6)), atol=1e-6)
    assert not torch.allclose(net(x[:, :, 2:4], t, c, torch.tensor([[2, 3], [2, 3]])), net(x[:, :, 2:4], t, c),
                              atol=1e-3)


@pytest.mark.parametrize("tconv", ["separated", "dynamic"])
def test_window_start0_and_3d_temporal_conv_train(monkeypatch, tconv):
    """window_start0 = 1: every window starts at frame 0; a recipe with 3D (separated or dynamic) temporal
    convolutions and relative temporal positions builds, trains a step and samples (the
    Conv3d weights stay contiguous)."""
    from aigc.errors import AigcError
    from aigc.recipes import build_config, recipe_class

    args = ["num_eval=4", "frames=6", "width=16", "groups=4", "heads=2", "batch_size=3", "train_frames=2",
            "window_start0=1", f'temporal_conv="{tconv}"', 'temporal_pos="relative"', "sample_steps=2"]
    cfg = build_config("video-diffusion", "moving-shapes", None, args, {})
    cls = recipe_class("video-diffusion")
    cls.check_config(cfg)
    data = cls.load_data(cfg)
    recipe = cls(cfg)
    seen = []
    loss = recipe.core.loss
    monkeypatch.setattr(recipe.core, "loss", lambda x0, c, generator=None, weighted=False, frame_index=None:
                        seen.append(frame_index) or loss(x0, c, generator, weighted, frame_index))
    opt = type("Opt", (), {"update": lambda self, name, loss: None})()
    out = recipe.train_step(next(cls.make_batcher(data, cfg)), opt)
    assert torch.isfinite(out["loss"]) and torch.equal(seen[0], torch.tensor([[0, 1]] * 3))
    assert gen(recipe, num=2, prompt="a red circle moving up").videos.shape == (2, 6, 32, 32, 3)
    for bad, words in [(['temporal_conv="2d"'], ["temporal_conv", "separated", "dynamic"]),
                       (["window_start0=1.5"], ["window_start0", "[0, 1]"]),
                       (['temporal_pos="absolute"'], ["temporal_pos", "relative"]),
                       (['spacetime_attention="both"'], ["spacetime_attention", "mid", "all"])]:
        with pytest.raises(AigcError) as e:
            cls.check_config(build_config("video-diffusion", "moving-shapes", None, args + bad, {}))
        assert all(w in str(e.value) for w in words), str(e.value)


def test_temporal_attention_relative_positions_can_look_at_the_previous_frame():
    """temporal_pos = relative: one learned bias per offset j - i; a bias on offset -1 alone makes every
    frame but the first attend to the frame before it, which plain temporal attention cannot tell apart."""
    from aigc.models.unet import TemporalAttention

    att = TemporalAttention(8, 2, 4, max_frames=4)
    assert att.rel.shape == (2, 7) and TemporalAttention(8, 2, 4).bias(4) is None
    with torch.no_grad():
        att.rel.copy_(torch.arange(14.0).view(2, 7))
        assert torch.equal(att.bias(3)[1], torch.tensor([[10.0, 11, 12], [9, 10, 11], [8, 9, 10]]))
        att.rel.zero_()
        att.rel[:, 2] = 60.0                                     # offset j - i = -1
        att.qkv.weight.zero_()
        att.qkv.bias.zero_()
        att.qkv.weight[16:].copy_(torch.eye(8))                # v = the normalised features, q = k = 0
        att.out.weight.copy_(torch.eye(8))
    x = torch.randn(2 * 4, 8, 3, 3)                            # 2 clips of 4 frames
    out = att(x, 4)
    v = att.norm(x).view(2, 4, 8, 3, 3)
    assert torch.allclose((out - x).view(2, 4, 8, 3, 3)[:, 1:], v[:, :-1], atol=1e-5)
    with pytest.raises(ValueError, match="up to 4 frames"):
        att(torch.randn(5, 8, 3, 3), 5)


def test_spacetime_attention_attends_over_all_frames_of_each_clip():
    """spacetime_attention: the attention of a clip's frames is the plain attention of one image made of its
    frames stacked (no positions, so token order does not matter); clips stay apart; off, frames stay apart."""
    from aigc.models.unet import Attention

    torch.manual_seed(0)
    att = Attention(8, 2, 4, spacetime=True)
    with torch.no_grad():
        att.out.weight.normal_()                             # zero-initialised: the block starts as the identity
    att.norm = torch.nn.Identity()                           # GroupNorm is per frame; the stacked image would mix them
    x = torch.randn(2 * 3, 8, 4, 5)                          # 2 clips of 3 frames
    stacked = x.view(2, 3, 8, 4, 5).transpose(1, 2).reshape(2, 8, 12, 5)      # (clip, C, frames * H, W)
    want = att(stacked).view(2, 8, 3, 4, 5).transpose(1, 2).reshape(6, 8, 4, 5)
    assert torch.allclose(att(x, 3), want, atol=1e-5)
    assert torch.allclose(att(x), torch.cat([att(f[None]) for f in x]), atol=1e-5)   # frames = 0: per image
    y = x.clone()
    y[0] += 1.0                                              # change frame 0 of clip 0
    d = (att(y, 3) - att(x, 3)).flatten(1).abs().amax(1)
    assert d[1] > 1e-3 and d[2] > 1e-3 and d[3:].max() == 0  # its clip's other frames change, the other clip not
    plain = Attention(8, 2, 4)
    plain.load_state_dict(att.state_dict(), strict=False)
    plain.norm = torch.nn.Identity()
    assert ((plain(y, 3) - plain(x, 3)).flatten(1).abs().amax(1)[1:] == 0).all()


def test_spacetime_attention_mid_or_all_blocks():
    """spacetime_attention = mid: only the middle block's attention is joint; all: every attention block's."""
    from aigc.models.unet import Attention, UNet
    from aigc.recipes.video import VideoDiffusionConfig as DiffusionConfig

    def joint(mode):
        net = UNet(DiffusionConfig(width=16, groups=4, heads=2, spacetime_attention=mode), (3, 16, 16), frames=4)
        return [(n.split(".")[0], m.spacetime) for n, m in net.named_modules() if isinstance(m, Attention)]

    assert not any(j for _, j in joint("none"))
    assert {n for n, j in joint("mid") if j} == {"mid"} and any(n != "mid" for n, _ in joint("mid"))
    assert all(j for _, j in joint("all"))


def test_windowed_sampling_covers_the_clip_with_each_windows_frame_indices(monkeypatch):
    """sample_window = k: the net sees half-overlapping k-frame windows with their indices in the clip, in one
    batch, and the prediction of a frame is the mean over the windows that hold it; sampling uses it."""
    from aigc.errors import AigcError
    from aigc.recipes import build_config, recipe_class
    from aigc.recipes.video import window_starts, windowed

    assert window_starts(16, 8) == [0, 4, 8] and window_starts(10, 4) == [0, 2, 4, 6]
    assert window_starts(7, 4) == [0, 2, 3] and window_starts(16, 0) == [0] and window_starts(8, 8) == [0]
    seen = []

    def net(x, t, c, frame_index):                 # frame f of window w predicts f's index + 100 w
        seen.append((tuple(x.shape), t.tolist(), c.tolist(), frame_index.tolist()))
        w = torch.arange(len(x)) // 2
        return (frame_index + 100 * w[:, None]).float()[:, None, :, None, None].expand_as(x)

    fn = windowed(net, 7, 4)
    out = fn(torch.zeros(2, 1, 7, 1, 1), torch.tensor([5, 6]), torch.tensor([[1], [2]]))
    assert seen == [((6, 1, 4, 1, 1), [5, 6] * 3, [[1], [2]] * 3,
                     [[0, 1, 2, 3]] * 2 + [[2, 3, 4, 5]] * 2 + [[3, 4, 5, 6]] * 2)]
    want = torch.tensor([0, 1, 2 + 50, 3 + 100, 4 + 150, 5 + 150, 6 + 200]).float()
    assert torch.equal(out[0, 0, :, 0, 0], want) and torch.equal(out[1], out[0])
    assert windowed(net, 8, 8) is net and windowed(net, 8, 0) is net

    args = ["num_eval=4", "frames=6", "width=16", "groups=4", "heads=2", "sample_steps=2", "sample_window=4"]
    cfg = build_config("video-diffusion", "moving-shapes", None, args, {})
    cls = recipe_class("video-diffusion")
    cls.check_config(cfg)
    cls.load_data(cfg)
    recipe = cls(cfg)
    frames_seen = []
    forward = recipe.net.forward
    monkeypatch.setattr(recipe.net, "forward", lambda x, *a: frames_seen.append(x.shape[2]) or forward(x, *a))
    assert gen(recipe, num=2, prompt="a red circle moving up").videos.shape == (2, 6, 32, 32, 3)
    assert frames_seen == [4, 4]                   # 2 steps, each one batch of windows
    with pytest.raises(AigcError, match="sample_window"):
        cls.check_config(build_config("video-diffusion", "moving-shapes", None, args + ["sample_window=-1"], {}))


# ---------------------------------------------------------------- CLI
TINY_GAN = ["--set", "num_eval=32", "--set", "frames=8", "--set", "batch_size=4", "--set", "g_width=8",
            "--set", "d_width=8", "--set", "z_dim=16"]
TINY_DIFF = ["--set", "num_eval=32", "--set", "frames=8", "--set", "batch_size=4", "--set", "width=16",
             "--set", "groups=4", "--set", "heads=2", "--set", "sample_steps=3"]


def trained_run(tmp_path_factory, family: str, steps: int, tiny: list):
    run = tmp_path_factory.mktemp(family) / "run"
    p = run_cli("train", family, "--data", "moving-shapes", "--steps", steps, "--out", run, *tiny)
    assert p.returncode == 0, p.stderr
    return run


@pytest.fixture(scope="module")
def video_gan_run(tmp_path_factory):
    return trained_run(tmp_path_factory, "video-gan", 3, TINY_GAN)


@pytest.fixture(scope="module")
def video_diffusion_run(tmp_path_factory):
    return trained_run(tmp_path_factory, "video-diffusion", 2, TINY_DIFF)


@pytest.mark.slow
def test_cli_video_training_writes_gif_and_frame_strip(video_gan_run):
    samples = video_gan_run / "samples"
    assert (samples / "step_0000003.gif").exists() and (samples / "step_0000003.png").exists()


@pytest.mark.slow
def test_cli_video_sample_npz_holds_clips_and_prompts(video_gan_run, tmp_path):
    p = run_cli("sample", video_gan_run, "--num", 3, "--prompt", "a green square moving down",
                "--out", tmp_path / "c.npz")
    assert p.returncode == 0, p.stderr
    z = np.load(tmp_path / "c.npz")
    assert z["videos"].shape == (3, 8, 32, 32, 3) and z["videos"].dtype == np.uint8
    assert list(z["prompts"]) == ["a green square moving down"] * 3


@pytest.mark.slow
def test_cli_video_sample_gif(video_gan_run, tmp_path):
    p = run_cli("sample", video_gan_run, "--num", 2, "--out", tmp_path / "c.gif")
    assert p.returncode == 0 and (tmp_path / "c.gif").stat().st_size > 0, p.stderr


@pytest.mark.slow
def test_cli_video_eval_scores_clip_metrics(video_gan_run):
    p = run_cli("eval", video_gan_run, "--num", 20)
    assert p.returncode == 0, p.stderr
    q = json.loads(p.stdout)["sample_quality"]
    assert q["num_samples"] == 20 and 0 <= q["frame_accuracy"] <= 1 and "direction_accuracy" in q


@pytest.mark.parametrize("args,words", [(["--prompt", "a purple dog"], ["no word this model knows", "left"]),
                                        (["--frames", 16], ["8-frame", "16-frame"]),
                                        (["--label", 1], ["class-conditional"]), (["--steps", 3], ["diffusion"])])
@pytest.mark.slow
def test_cli_video_gan_refuses_what_it_cannot_do(video_gan_run, tmp_path, args, words):
    assert_clean_error(run_cli("sample", video_gan_run, "--num", 2, *args, "--out", tmp_path / "x.gif"), *words)


@pytest.mark.slow
def test_cli_video_sample_needs_a_gif_or_npz(video_gan_run, tmp_path):
    assert_clean_error(run_cli("sample", video_gan_run, "--num", 2, "--out", tmp_path / "x.png"), ".gif")


@pytest.mark.slow
def test_cli_video_diffusion_samples_with_guidance_and_steps(video_diffusion_run, tmp_path):
    p = run_cli("sample", video_diffusion_run, "--num", 2, "--prompt", "a red circle moving left", "--guidance", 2,
                "--steps", 2, "--out", tmp_path / "v.npz")
    assert p.returncode == 0, p.stderr
    assert np.load(tmp_path / "v.npz")["videos"].shape == (2, 8, 32, 32, 3)


@pytest.mark.slow
def test_cli_video_diffusion_has_no_trajectory(video_diffusion_run, tmp_path):
    assert_clean_error(run_cli("sample", video_diffusion_run, "--what", "trajectory", "--out", tmp_path / "x.gif"),
                       "image")


def test_cli_eval_samples_of_another_length_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "v.npz", videos=np.zeros((2, 8, 32, 32, 3), np.uint8))
    assert_clean_error(run_cli("eval", "--samples", tmp_path / "v.npz", "--data", "moving-shapes"),
                       "frame count", "(3, 16, 32, 32)")


def test_cli_eval_samples_of_real_clips_reads_them_all(tmp_path):
    good = shape_clips(4)
    np.savez(tmp_path / "real.npz", videos=good["video"].permute(0, 2, 3, 4, 1).numpy(),
             prompts=np.array(good["caption"]))
    p = run_cli("eval", "--samples", tmp_path / "real.npz", "--data", "moving-shapes")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["prompt_accuracy"] == 1.0


@pytest.mark.parametrize("kind,words", [("not-a-zip", "not a readable npz"), ("float", "uint8")])
def test_cli_eval_samples_bad_clip_files(tmp_path, kind, words):
    path = tmp_path / "bad.npz"
    if kind == "not-a-zip":
        path.write_bytes(b"not a zip file")
    else:
        np.savez(path, videos=np.zeros((2, 16, 32, 32, 3), np.float32))
    assert_clean_error(run_cli("eval", "--samples", path, "--data", "moving-shapes"), words)


@pytest.mark.parametrize("family,data,words", [("diffusion", "moving-shapes", "video-gan or video-diffusion"),
                                               ("video-gan", "shapes", "moving-shapes")])
def test_cli_family_and_data_kind_must_match(tmp_path, family, data, words):
    assert_clean_error(run_cli("train", family, "--data", data, "--steps", 1, "--out", tmp_path / "x"), words)
