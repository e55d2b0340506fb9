"""Models: the (x, mask) -> unit (B, D) contract, padding, learning, registry and configs."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lvm.errors import LvmError
from lvm.models import MODEL_TYPES, build_model, config_dict, count_parameters
from lvm.models.baselines import ContextMean

D, CTX = 16, 4
# Small but complete configurations: every code path of the default ones, at test speed.
SMALL = {
    "amn": {"d_model": 8, "hidden_dim": 32},
    "gru": {"hidden_dim": 16, "n_layers": 2},
    "lstm": {"hidden_dim": 16, "n_layers": 2},
    "transformer": {"d_model": 16, "n_heads": 2, "n_layers": 2},
}
ALL_TYPES = sorted(MODEL_TYPES)
HYPOTHESIS = settings(max_examples=20, deadline=None, derandomize=True, database=None)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: handing a 64×16 LayerNorm to a second thread costs more than the work
    (milliseconds instead of microseconds when the other core is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def small_model(model_type: str) -> torch.nn.Module:
    """A small model with every weight perturbed away from its initialisation.

    AMN starts as the context mean (zero output layer); perturbing makes the padding tests
    exercise its attention and MLP too, not only the mean.
    """
    torch.manual_seed(0)
    model = build_model(model_type, {"input_dim": D, "ctx": CTX, **SMALL[model_type]})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def unit(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def left_padded_mask(lengths: list[int], T: int) -> torch.Tensor:
    """(B, T) mask with the last lengths[b] positions of row b real."""
    return torch.arange(T)[None, :] >= (T - torch.tensor(lengths))[:, None]


@st.composite
def contexts(draw):
    """(x, mask): a left-padded batch of unit vectors, every row with >= 1 real chunk at the end."""
    B = draw(st.integers(1, 5))
    T = draw(st.integers(1, CTX))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    seed = draw(st.integers(0, 2**31 - 1))
    return unit(B, T, D, generator=torch.Generator().manual_seed(seed)), left_padded_mask(lengths, T)


@pytest.mark.parametrize("model_type", ALL_TYPES)
@HYPOTHESIS
@given(batch=contexts())
def test_outputs_are_finite_unit_vectors(model_type, batch):
    x, mask = batch
    with torch.no_grad():
        y = small_model(model_type)(x, mask)
    assert y.shape == (x.shape[0], D)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(x.shape[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ALL_TYPES)
@HYPOTHESIS
@given(batch=contexts(), fill=st.sampled_from([0.0, 1e3, float("nan"), "random"]))
def test_padded_positions_do_not_change_the_output(model_type, batch, fill):
    x, mask = batch
    x2 = x.clone()
    pads = ~mask
    x2[pads] = torch.randn(int(pads.sum()), D) * 10 if fill == "random" else fill
    model = small_model(model_type)
    with torch.no_grad():
        torch.testing.assert_close(model(x2, mask), model(x, mask), atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", ALL_TYPES)
@HYPOTHESIS
@given(batch=contexts())
def test_left_padded_context_equals_the_unpadded_one(model_type, batch):
    """Padding is invisible: a padded row predicts what its real chunks alone predict.

    Stronger than changing pad values: zero-valued pad steps that still ran through a recurrence,
    counted in a mean, or shifted the position embeddings would all fail here.
    """
    x, mask = batch
    model = small_model(model_type)
    with torch.no_grad():
        padded = model(x, mask)
        for b, n_real in enumerate(mask.sum(dim=1).tolist()):
            alone = model(x[b : b + 1, -n_real:], None)[0]
            torch.testing.assert_close(padded[b], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_gradients_are_finite_with_nan_padding(model_type):
    """Padding must be replaced, not multiplied by 0 (NaN · 0 = NaN), and padded attention rows
    (no real key) must not produce NaN: either would poison every gradient."""
    torch.manual_seed(1)
    model = build_model(model_type, {"input_dim": D, "ctx": CTX, **SMALL[model_type]})
    mask = left_padded_mask([1, 2, CTX], CTX)
    x = unit(3, CTX, D).masked_fill(~mask[..., None], float("nan"))
    loss = (1 - (model(x, mask) * unit(3, D)).sum(-1)).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_untrained_amn_predicts_the_context_mean():
    """AMN is a residual on the context mean with a zero-initialised correction (amn.py)."""
    torch.manual_seed(2)
    model = build_model("amn", {"input_dim": D, "ctx": CTX}).eval()
    x, mask = unit(4, CTX, D), left_padded_mask([1, 2, 3, 4], CTX)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask), ContextMean()(x, mask), atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_model_learns_a_tiny_learnable_problem(model_type):
    """y = normalize(x_last @ W): 50 Adam steps on one fixed batch must cut the cosine loss."""
    torch.manual_seed(3)
    model = build_model(model_type, {"input_dim": D, "ctx": CTX, **SMALL[model_type]})
    x = unit(64, CTX, D)
    mask = left_padded_mask(torch.randint(1, CTX + 1, (64,)).tolist(), CTX)
    y = F.normalize(x[:, -1] @ torch.randn(D, D), dim=-1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def cosine_loss():
        return 1 - (model(x, mask) * y).sum(-1).mean()

    initial = cosine_loss().item()
    for _ in range(50):
        optimizer.zero_grad()
        loss = cosine_loss()
        loss.backward()
        optimizer.step()
    final = cosine_loss().item()
    assert final < 0.3 * initial, f"{model_type}: cosine loss {initial:.3f} -> {final:.3f}"


def test_amn_has_about_one_and_a_half_million_parameters_at_768():
    n = count_parameters(build_model("amn", {"input_dim": 768, "ctx": 5}))
    assert 1_000_000 <= n <= 2_000_000, n


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_parameter_count_grows_with_width(model_type):
    narrow = count_parameters(build_model(model_type, {"input_dim": 384, "ctx": 5}))
    wide = count_parameters(build_model(model_type, {"input_dim": 768, "ctx": 5}))
    assert 0 < narrow < wide


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_config_dict_rebuilds_the_same_model(model_type):
    model = small_model(model_type)
    config = config_dict(model)
    assert config["input_dim"] == D and config["ctx"] == CTX
    rebuilt = build_model(model_type, config).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x, mask = unit(2, CTX, D), left_padded_mask([2, CTX], CTX)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, mask), model(x, mask))


def test_unknown_model_type_names_the_known_ones():
    with pytest.raises(LvmError, match="unknown model type 'mamba'.*amn, gru, lstm, transformer"):
        build_model("mamba", {"input_dim": D, "ctx": CTX})


@pytest.mark.parametrize(
    ("model_type", "config", "message"),
    [
        ("amn", {"input_dim": D, "ctx": CTX, "n_heads": 4}, "unknown amn config key.*n_heads"),
        ("gru", {"ctx": CTX}, "missing required key.*input_dim"),
        ("lstm", {"input_dim": D, "ctx": CTX, "hidden_dim": "big"}, "hidden_dim must be an integer"),
        ("lstm", {"input_dim": D, "ctx": CTX, "n_layers": True}, "n_layers must be an integer"),
        ("gru", {"input_dim": D, "ctx": 0}, "ctx must be >= 1"),
        ("amn", {"input_dim": D, "ctx": CTX, "dropout": 1.5}, "dropout must be in"),
        ("transformer", {"input_dim": D, "ctx": CTX, "d_model": 10, "n_heads": 4}, "divisible"),
    ],
)
def test_bad_config_raises_one_clear_error(model_type, config, message):
    with pytest.raises(LvmError, match=message) as error:
        build_model(model_type, config)
    assert "\n" not in str(error.value)


def test_integer_dropout_is_accepted_as_a_number():
    assert build_model("amn", {"input_dim": D, "ctx": CTX, "dropout": 0}).config.dropout == 0.0


@pytest.mark.parametrize("model_type", ALL_TYPES)
@pytest.mark.parametrize(
    ("x", "mask", "message"),
    [
        (unit(2, CTX + 1, D), None, "built for ctx=4"),
        (unit(2, CTX, D + 1), None, "built for 16-D"),
        (unit(2, CTX, D), torch.tensor([[True] * CTX, [True] * (CTX - 1) + [False]]), "last context position"),
        (unit(1, CTX, D), torch.tensor([[False, True, False, True]]), "left padding"),
        (unit(2, CTX, D), torch.ones(2, CTX - 1, dtype=torch.bool), "mask must have shape"),
    ],
)
def test_bad_context_raises_lvm_error(model_type, x, mask, message):
    with pytest.raises(LvmError, match=message):
        small_model(model_type)(x, mask)
