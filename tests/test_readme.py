"""The README's own-model example runs as printed, in at most 10 lines of code, and does what
its prose says; its list of the public API names every public name."""

import ast
import inspect
import re
from pathlib import Path

import jax
import numpy as np
import optax

import glocal_core as gc

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "# own model"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _own_model_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", _section("Using the library"), re.S)
    examples = [b for b in blocks if b.startswith(MARKER)]
    assert len(examples) == 1, f"one ```python block of 'Using the library' starts {MARKER!r}"
    return examples[0]


def _code_lines(source: str) -> list[str]:
    """Lines that are code: not blank, not a comment, not part of an import statement."""
    imports = {n for node in ast.walk(ast.parse(source))
               if isinstance(node, (ast.Import, ast.ImportFrom))
               for n in range(node.lineno, node.end_lineno + 1)}
    return [line for i, line in enumerate(source.splitlines(), start=1)
            if line.strip() and not line.strip().startswith("#") and i not in imports]


def test_the_own_model_example_has_at_most_ten_lines_of_code():
    lines = _code_lines(_own_model_example())
    assert 5 <= len(lines) <= 10, "\n".join(lines)


def test_the_own_model_example_runs_and_learns_its_learning_rate(capsys):
    namespace: dict = {}
    exec(compile(_own_model_example(), str(README), "exec"), namespace)
    result, opt, tuned = namespace["result"], namespace["opt"], namespace["tuned"]
    config = result.config
    assert result.stopped == ""
    assert len(result.step) == config.num_windows == 10 and result.step[-1] == 400
    assert result.names == ("learning_rate",)
    start, learned = result.hyperparameters[0, 0], result.final_hyperparameters[0]
    np.testing.assert_allclose(start, 0.01, rtol=1e-5)
    assert 1e-4 < learned < 1.0 and abs(np.log(learned / start)) > np.log(1.5), learned
    assert result.metric_name == "mse" and np.isfinite(result.test_metric[-1])
    assert result.val_loss[-1] < result.val_loss[0]
    assert "learning rate:" in capsys.readouterr().out

    # Retraining with the exported schedule in a plain optax loop replays the learned values.
    mse, train, val = namespace["mse"], namespace["train"], namespace["val"]
    step = jax.jit(lambda p, s: _plain_step(tuned, mse, p, s, train))
    params, state = namespace["params"], tuned.init(namespace["params"])
    last = len(result.hyperparameters) - 1
    for k in range(config.total_steps):
        params, state = step(params, state)
        np.testing.assert_allclose(state.hyperparams["learning_rate"],  # the rate of step k
                                   result.hyperparameters[min(k // config.tau, last), 0],
                                   rtol=1e-5)
    assert mse(params, val) < mse(namespace["params"], val)
    assert isinstance(tuned, optax.GradientTransformation) and opt.space.size == 1


def _plain_step(tx, loss, params, state, batch):
    updates, state = tx.update(jax.grad(loss)(params, batch), state, params)
    return optax.apply_updates(params, updates), state


def test_the_readme_lists_every_public_name_under_its_idea():
    section = _section("Using the library").split("### The public API", 1)[1]
    listed = set(re.findall(r"^- `(\w+)`(?:, `(\w+)`)?", section, re.M))
    listed = {name for pair in listed for name in pair if name}
    public = {n for n in dir(gc)
              if not n.startswith("_") and not inspect.ismodule(getattr(gc, n))}
    assert listed == public, (f"not in the README: {sorted(public - listed)}; "
                              f"not public: {sorted(listed - public)}")
