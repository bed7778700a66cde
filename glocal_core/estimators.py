"""The steady-state estimators and what they record, as a namespace
(`glocal_core.estimators`): the names a user reads an `Estimate` with.

- `steady_state`, `glocal_estimate`, `Estimate`, `EstimatorSettings`, `ESTIMATOR_DEFAULTS`,
  `METHODS`, `ModeFit`, `CrossValidation`: as at the top level.
- `USES` = (`EXTRAPOLATED`, `MEAN`, `LOCAL`): what a coordinate of an estimate is
  (`Estimate.used`, `OuterResult.used`).
- `DIVERGENT`, `UNCONFIRMED` and `FALLBACK_KINDS`: why a coordinate was not extrapolated
  (`Estimate.reasons`, `OuterResult.reasons`).
"""

from ._crossval import DIVERGENT as DIVERGENT
from ._crossval import UNCONFIRMED as UNCONFIRMED
from ._crossval import CrossValidation as CrossValidation
from ._dmd import FALLBACK_KINDS as FALLBACK_KINDS
from ._estimators import ESTIMATOR_DEFAULTS as ESTIMATOR_DEFAULTS
from ._estimators import EXTRAPOLATED as EXTRAPOLATED
from ._estimators import LOCAL as LOCAL
from ._estimators import MEAN as MEAN
from ._estimators import METHODS as METHODS
from ._estimators import REASONS as REASONS
from ._estimators import USES as USES
from ._estimators import Estimate as Estimate
from ._estimators import EstimatorSettings as EstimatorSettings
from ._estimators import ModeFit as ModeFit
from ._estimators import glocal_estimate as glocal_estimate
from ._estimators import steady_state as steady_state
