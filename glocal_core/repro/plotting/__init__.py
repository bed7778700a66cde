"""Every figure of the book: one colour per strategy, DMD spectra and modes, runs, estimates.

Import it as `import glocal_core.repro.plotting as gplt`; `import glocal_core` does not import it,
so the library itself needs no matplotlib. Every helper draws on an `Axes` it is given and
returns it, leaving titles (which name the profile, see `caption`) to the caller:

```python
fig, ax = plt.subplots()
plot_eigenvalues(ax, fit)
ax.set(title=f"Hankel DMD eigenvalues ({caption(PROFILE, data.name)})")
```

The near-one eigenvalues and their modes are drawn in the colour of the `glocal` strategy:
they are the part of the DMD that the glocal estimate keeps (Eq. 14).

Figures are sized for the book's text width (`BOOK_WIDTH`): `panel_grid` lays out any number
of panels at most two per row, and `shared_legend` puts one legend under them. The chapters
use the house style `plt.style.use("glocal_core.repro.book")` (`book.mplstyle`): 10 pt ticks, which
read at 8 pt or more wherever the browser scales a figure to at least 80% (the built-book
browser test checks that every figure is shown at that scale or larger).
"""

from ._analysis import ESTIMATOR_COLORS as ESTIMATOR_COLORS
from ._analysis import delta_sweep_figure as delta_sweep_figure
from ._analysis import dmd_grid_figure as dmd_grid_figure
from ._analysis import error_scatter_figure as error_scatter_figure
from ._analysis import error_terms_figure as error_terms_figure
from ._analysis import fidelity_figure as fidelity_figure
from ._analysis import quality_figure as quality_figure
from ._analysis import spectra_figure as spectra_figure
from ._analysis import trust_figure as trust_figure
from ._base import BOOK_WIDTH as BOOK_WIDTH
from ._base import OTHER_MODES_COLOR as OTHER_MODES_COLOR
from ._base import STRATEGY_COLORS as STRATEGY_COLORS
from ._base import STRATEGY_LINEWIDTHS as STRATEGY_LINEWIDTHS
from ._base import UNIT_CIRCLE_COLOR as UNIT_CIRCLE_COLOR
from ._base import caption as caption
from ._base import log_axis as log_axis
from ._base import panel_grid as panel_grid
from ._base import plot_eigenvalues as plot_eigenvalues
from ._base import plot_fallbacks as plot_fallbacks
from ._base import plot_hypergradients as plot_hypergradients
from ._base import plot_mean_std as plot_mean_std
from ._base import plot_mode_decay as plot_mode_decay
from ._base import plot_runtime as plot_runtime
from ._base import shared_legend as shared_legend
from ._base import window_figure as window_figure
from ._runs import class_share_figure as class_share_figure
from ._runs import fallback_figure as fallback_figure
from ._runs import hypergradient_error_figure as hypergradient_error_figure
from ._runs import panel_caption as panel_caption
from ._runs import plot_runs as plot_runs
from ._runs import reweighting_curves_figure as reweighting_curves_figure
from ._runs import runtime_figure as runtime_figure
from ._runs import strategies_figure as strategies_figure
from ._runs import table2_figure as table2_figure
from ._runs import used_update_figure as used_update_figure
from ._runs import weighting_figure as weighting_figure
