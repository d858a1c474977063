"""The model-specific pictures (CNN filters and maps, MLP weights, recurrent gates, Mamba
selectivity) and the penultimate-feature embedding: each writes a readable PNG, and what they
recompute outside the fused kernels (gates, selective scan, PCA) is what the model computes."""
from __future__ import annotations

import math
import sys
import types

import matplotlib.image as mpimg
import pytest
import torch
from torch import nn

from pyneuro import nn as pnn
from pyneuro.data import to_view
from pyneuro.models import registry
from pyneuro.models.recurrent import RowClassifier
from pyneuro.viz import ann, cnn, embedding, mamba, recurrent


@pytest.fixture(scope="module")
def digits():
    """24 random uint8 'images' with labels cycling through the 10 classes."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 28, 28), dtype=torch.uint8, generator=generator)
    return images, torch.arange(24) % 10


def _png(path, min_height=150, min_width=250):
    """The PNG decodes, is of a sensible size and is not blank."""
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] >= min_height and image.shape[1] >= min_width, image.shape
    assert image.shape[0] <= 2500 and image.shape[1] <= 2500, image.shape
    assert image[..., :3].std() > 0.05, "the picture is (nearly) one colour"
    return image


# Tiny hyper-parameters for every classifier in the registry.
TINY = {
    "cnn": {"channels": [4, 8], "convs_per_block": 1, "hidden": 16},
    "ann": {"hidden": [16]},
    "rnn": {"hidden_size": 8, "num_layers": 1},
    "lstm": {"hidden_size": 8},
    "gru": {"hidden_size": 8},
    "transformer": {"d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 16},
    "mamba": {"d_model": 8, "n_layers": 1, "d_state": 4},
    "mtrnn": {"fast_size": 8, "slow_size": 4},
    "s4d": {"d_model": 8, "n_layers": 1, "d_state": 4},
}


def _tiny(name, **extra):
    torch.manual_seed(0)
    return registry.get(name).build(**{**TINY[name], **extra})


# ----------------------------------------------------------------------------- hooks and pictures

@pytest.mark.parametrize("name,module", [("cnn", cnn), ("ann", ann), ("rnn", recurrent), ("lstm", recurrent),
                                         ("gru", recurrent), ("mamba", mamba)])
def test_each_model_has_its_pictures_registered(name, module):
    hook = registry.get(name).plot_function()
    assert callable(hook) and hook is module.plots


def test_cnn_pictures(digits, tmp_path):
    images, labels = digits
    model = _tiny("cnn")
    paths = registry.get("cnn").plot_function()(model, images, labels, tmp_path, title="cnn", view="image")
    assert paths == [tmp_path / "filters.png", tmp_path / "feature_maps.png"]
    for path in paths:
        _png(path)
    assert model.training  # the mode is restored
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_cnn_maps_are_taken_after_the_norm_and_activation():
    model = _tiny("cnn")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    stage = cnn._stage_outputs(model, convs)
    # conv, fused BN + ReLU (+ pool) per conv: that layer's output is the map drawn.
    assert [type(stage[c]) for c in convs] == [pnn.BatchNormReLU2d] * len(convs)
    assert stage[convs[0]] is model.features[1]
    # torch.nn's separate layers: the ReLU's, not the BN's or the conv's.
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    assert cnn._stage_outputs(plain, [plain[0]])[plain[0]] is plain[2]


def test_cnn_filters_of_a_layer_with_several_input_channels(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU())
    _png(cnn.plot_filters(model, tmp_path / "filters.png"), min_width=150)


def test_ann_weights(digits, tmp_path):
    images, labels = digits
    (path,) = registry.get("ann").plot_function()(_tiny("ann"), images, labels, tmp_path, title="ann")
    assert path == tmp_path / "weights.png"
    _png(path)


@pytest.mark.parametrize("name,view", [("rnn", "rows"), ("lstm", "rows"), ("gru", "rows"), ("lstm", "pixels")])
def test_recurrent_gates_picture(name, view, digits, tmp_path):
    images, labels = digits
    model = _tiny(name) if view == "rows" else _tiny(name, view=view)
    (path,) = registry.get(name).plot_function()(model, images, labels, tmp_path, title=name, view=view)
    assert path == tmp_path / "gates.png"
    _png(path)
    assert model.training


def test_mamba_selectivity_picture(digits, tmp_path):
    images, labels = digits
    model = _tiny("mamba", n_layers=2)
    (path,) = registry.get("mamba").plot_function()(model, images, labels, tmp_path, title="mamba", view="rows")
    assert path == tmp_path / "selectivity.png"
    _png(path)
    _png(mamba.plot_selectivity(model, images, labels, tmp_path / "second.png", layer=1, count=2))
    assert model.training


# ----------------------------------------------------------------------------- recomputed gates

@pytest.mark.parametrize("view", ["rows", "pixels"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recomputed_hidden_state_is_the_layers_output(cell, view, digits):
    """If a gate equation or the gate order were wrong, h would differ from the layer's output."""
    torch.manual_seed(1)
    model = RowClassifier(cell, hidden_size=12, view=view)
    x = to_view(digits[0][:3], view)[:, :40]  # 28 rows, or the first 40 pixels
    output, final = model.rnn(x)
    trace = recurrent.recompute_gates(model.rnn, x)
    torch.testing.assert_close(trace["h"], output)
    if cell == "lstm":
        torch.testing.assert_close(trace["c"][:, -1], final[1][0])
    gates = {"rnn": [], "lstm": ["i", "f", "o"], "gru": ["r", "z"]}[cell]
    for gate in gates:
        assert trace[gate].shape == output.shape and 0 <= trace[gate].min() and trace[gate].max() <= 1


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_recomputed_gates_follow_torch_nn(cell):
    """The equations and gate order are torch.nn's: the same weights in torch.nn give the same h,
    with the time-major layout, and for torch.nn's own layer too."""
    torch.manual_seed(2)
    ours = getattr(pnn, cell)(5, 7)  # batch_first=False
    theirs = getattr(nn, cell)(5, 7)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(9, 3, 5)  # (T, batch, features)
    expected = theirs(x)[0].transpose(0, 1)
    torch.testing.assert_close(recurrent.recompute_gates(ours, x)["h"], expected)
    torch.testing.assert_close(recurrent.recompute_gates(theirs, x)["h"], expected)


def test_recomputed_first_layer_of_deeper_and_wider_layers():
    torch.manual_seed(3)
    x = torch.randn(2, 10, 6)
    stacked = pnn.GRU(6, 8, num_layers=2, batch_first=True)  # the first layer's last h is h_n[0]
    _, h_n = stacked(x)
    torch.testing.assert_close(recurrent.recompute_gates(stacked, x)["h"][:, -1], h_n[0])
    both = pnn.LSTM(6, 8, bidirectional=True, batch_first=True)  # the forward direction: first 8 features
    torch.testing.assert_close(recurrent.recompute_gates(both, x)["h"], both(x)[0][..., :8])
    projected = pnn.LSTM(6, 8, proj_size=3, batch_first=True)
    torch.testing.assert_close(recurrent.recompute_gates(projected, x)["h"], projected(x)[0])
    relu = pnn.RNN(6, 8, nonlinearity="relu", batch_first=True)
    torch.testing.assert_close(recurrent.recompute_gates(relu, x)["h"], relu(x)[0])


# ----------------------------------------------------------------------------- recomputed scan

@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_recomputed_selective_scan_is_the_blocks_output(backend, digits):
    torch.manual_seed(4)
    model = registry.get("mamba").build(d_model=8, n_layers=2, d_state=4, backend=backend).eval()
    seen = []  # each block's (input, output) in the model's own forward pass
    for block in model.blocks:
        block.register_forward_hook(lambda module, args, output: seen.append((args[0], output)))
    with torch.no_grad():
        model(to_view(digits[0][:3], "rows"))
        for block, (hidden, output) in zip(model.blocks, seen, strict=True):
            trace = mamba.recompute_selective_scan(block, hidden)
            torch.testing.assert_close(trace["out"], output)
    d_inner = model.blocks[0].d_inner
    assert trace["delta"].shape == (3, 28, d_inner) and (trace["delta"] > 0).all()
    assert trace["state_norm"].shape == (3, 28, d_inner) and (trace["state_norm"] >= 0).all()


def test_recomputed_selective_scan_matches_a_trained_looking_block():
    """Non-default parameters (large, varied Δ; conv bias; D ≠ 1) still give the block's output."""
    torch.manual_seed(5)
    block = pnn.Mamba(6, d_state=3, d_conv=3, expand=1.5, bias=True)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    hidden = torch.randn(2, 11, 6)
    torch.testing.assert_close(mamba.recompute_selective_scan(block, hidden)["out"], block(hidden))


# ----------------------------------------------------------------------------- embedding

def test_every_classifier_has_tiny_settings_here():
    assert set(TINY) == set(registry.names("classify"))


@pytest.mark.parametrize("name", sorted(TINY))
def test_embedding_of_every_classifier(name, digits, tmp_path):
    images, labels = digits
    model = _tiny(name)
    view = registry.get(name).view
    features, predictions = embedding.penultimate_features(model, images, view)
    assert features.dtype == torch.float32 and features.shape[0] == len(images) and features.dim() == 2
    # The features are the head's input: the head turns them into the model's own logits.
    head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 10][-1]
    model.eval()
    with torch.no_grad():
        logits = model(to_view(images, view, patch_size=getattr(model, "patch_size", 7)))
        torch.testing.assert_close(head(features), logits)
    assert torch.equal(predictions, logits.argmax(-1))
    model.train()
    path = embedding.plot_embedding(model, images, labels, tmp_path / "embedding.png", title=name, view=view,
                                    count=20)
    assert path == tmp_path / "embedding.png"
    _png(path)
    assert model.training


def test_embedding_view_comes_from_the_model_when_it_has_one(digits, tmp_path):
    images, labels = digits
    for name in ("lstm", "transformer"):  # a view attribute; a patch_size
        embedding.plot_embedding(_tiny(name), images, labels, tmp_path / f"{name}.png")


def test_embedding_adds_a_tsne_panel_when_scikit_learn_is_there(digits, tmp_path, monkeypatch, kept_figures):
    """scikit-learn is not a dependency: a stand-in TSNE checks the second panel's code path."""
    calls = []

    class TSNE:
        def __init__(self, **options):
            calls.append(options)

        def fit_transform(self, features):
            return features[:, :2] * 2

    manifold = types.ModuleType("sklearn.manifold")
    manifold.TSNE = TSNE
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.manifold", manifold)
    images, labels = digits
    _png(embedding.plot_embedding(_tiny("gru"), images, labels, tmp_path / "e.png", count=20))
    assert len(calls) == 1 and calls[0]["n_components"] == 2
    (fig,) = kept_figures
    assert [ax.get_title() for ax in fig.axes] == ["PCA", "t-SNE"]


def test_embedding_without_scikit_learn_has_the_pca_panel_only(digits, tmp_path, monkeypatch, kept_figures):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import fails as if not installed
    images, labels = digits
    embedding.plot_embedding(_tiny("gru"), images, labels, tmp_path / "e.png", count=20)
    (fig,) = kept_figures
    assert [ax.get_title() for ax in fig.axes] == ["PCA"]


def test_pca_finds_the_known_principal_axes():
    torch.manual_seed(6)
    along = torch.linspace(-10, 10, 41)       # the large-variance direction's coordinate (mean 0)
    across = 0.5 * torch.randn(41)            # a small one, uncorrelated with it over the sample
    across -= across.mean()
    across -= (across @ along) / (along @ along) * along
    first = torch.tensor([0.0, 0.6, 0.0, 0.8, 0.0])   # largest loading positive: the sign kept
    second = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    offset = torch.tensor([3.0, -2.0, 1.0, 5.0, 7.0])
    features = along[:, None] * first + across[:, None] * second + offset
    coords, explained = embedding.pca_2d(features)
    assert coords.shape == (41, 2) and coords.dtype == torch.float32
    torch.testing.assert_close(coords[:, 0], along, atol=1e-4, rtol=0)
    torch.testing.assert_close(coords[:, 1], across, atol=1e-4, rtol=0)
    total = along.var() + across.var()
    torch.testing.assert_close(explained, torch.stack([along.var(), across.var()]) / total)
    # The axes' signs come from the axes, not from the SVD: the same picture for the images in
    # another order, and mirrored features give mirrored coordinates.
    order = torch.randperm(41)
    torch.testing.assert_close(embedding.pca_2d(features[order])[0], coords[order], atol=1e-4, rtol=0)
    torch.testing.assert_close(embedding.pca_2d(-features)[0], -coords, atol=1e-4, rtol=0)


def test_pca_of_one_feature_has_a_flat_second_axis():
    coords, explained = embedding.pca_2d(torch.arange(5.0)[:, None])
    torch.testing.assert_close(coords[:, 0], torch.arange(5.0) - 2)
    assert (coords[:, 1] == 0).all() and math.isclose(explained[0].item(), 1.0) and explained[1] == 0


# ----------------------------------------------------------------------------- bad arguments

def test_bad_images_and_labels_are_named(digits, tmp_path):
    images, labels = digits
    cases = [(cnn.plots, _tiny("cnn")), (ann.plots, _tiny("ann")), (recurrent.plots, _tiny("lstm")),
             (mamba.plots, _tiny("mamba"))]
    for hook, model in cases:
        with pytest.raises(ValueError, match="^images:"):
            hook(model, images[:, :27], labels, tmp_path)
        with pytest.raises(ValueError, match="^images:"):
            hook(model, images.float(), labels, tmp_path)
        with pytest.raises(ValueError, match="^labels:"):
            hook(model, images, labels[:5], tmp_path)
    with pytest.raises(ValueError, match="^images:"):
        embedding.plot_embedding(_tiny("cnn"), images[:, :, :20], labels, tmp_path / "e.png", view="image")
    with pytest.raises(ValueError, match="^labels:"):
        embedding.plot_embedding(_tiny("cnn"), images, labels[:3], tmp_path / "e.png", view="image")


def test_models_without_the_expected_layer_are_refused(digits, tmp_path):
    images, labels = digits
    mlp = _tiny("ann")
    for hook in (cnn.plots, recurrent.plots, mamba.plots):
        with pytest.raises(ValueError, match="^model:"):
            hook(mlp, images, labels, tmp_path)
    with pytest.raises(ValueError, match="^model:"):
        ann.plots(_tiny("lstm"), images, labels, tmp_path)
    with pytest.raises(ValueError, match="^model:"):
        embedding.plot_embedding(nn.Sequential(nn.Flatten(), nn.Linear(784, 5)), images, labels,
                                 tmp_path / "e.png", view="image")
    assert not list(tmp_path.iterdir())  # nothing was written


def test_other_bad_arguments_are_named(digits, tmp_path):
    images, labels = digits
    lstm = _tiny("lstm")
    with pytest.raises(ValueError, match="^view:"):
        embedding.plot_embedding(_tiny("cnn"), images, labels, tmp_path / "e.png")  # no view to infer
    with pytest.raises(ValueError, match="^view:"):
        embedding.plot_embedding(lstm, images, labels, tmp_path / "e.png", view="columns")
    with pytest.raises(ValueError, match="^count:"):
        embedding.plot_embedding(lstm, images, labels, tmp_path / "e.png", count=1)
    with pytest.raises(ValueError, match="^count:"):
        recurrent.plot_gates(lstm, images, labels, tmp_path / "g.png", count=0)
    with pytest.raises(ValueError, match="^view:"):
        recurrent.plot_gates(lstm, images, labels, tmp_path / "g.png", view="patches")
    with pytest.raises(ValueError, match="^x:"):
        recurrent.recompute_gates(lstm.rnn, torch.randn(2, 5, 3))  # 3 features, the layer takes 28
    with pytest.raises(ValueError, match="^layer:"):
        recurrent.recompute_gates(nn.Linear(3, 3), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="^hidden:"):
        mamba.recompute_selective_scan(_tiny("mamba").blocks[0], torch.randn(2, 5))
    with pytest.raises(ValueError, match="^layer:"):
        mamba.plot_selectivity(_tiny("mamba"), images, labels, tmp_path / "s.png", layer=3)
    with pytest.raises(ValueError, match="^features:"):
        embedding.pca_2d(torch.randn(10))
    with pytest.raises(ValueError, match="^index:"):
        cnn.plot_feature_maps(_tiny("cnn"), images, tmp_path / "f.png", index=len(images))
