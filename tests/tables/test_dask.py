"""Tables beyond one process: a fitted imputer on a Dask DataFrame across a cluster's workers, and fitting on a
sample of the rows (fit_rows)."""

import pandas as pd
import pytest
from test_column_types import FAST, typed_frame  # the frame of every column type

from mivae.errors import InputError
from mivae.tables.estimators import MIWAEImputer, NotMIWAEImputer

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of 2 worker processes, one thread each: partitions imputed in other processes."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        with distributed.Client(c) as client:
            yield client


@pytest.mark.parametrize("Imputer", (MIWAEImputer, NotMIWAEImputer), ids=lambda c: c.__name__)
def test_a_dask_frame_is_imputed_by_the_workers_row_for_row_as_in_memory(Imputer, cluster):
    _, incomplete, _ = typed_frame(rows=200, seed=2)
    imputer = Imputer(**FAST).fit(incomplete)
    lazy = imputer.transform(dd.from_pandas(incomplete, npartitions=4))
    assert type(lazy).__module__.startswith("dask") and list(lazy.dtypes) == list(incomplete.dtypes)
    workers = set(cluster.run(lambda: 1))
    assert len(workers) == 2  # two processes besides this one
    computed, in_memory = lazy.compute(), imputer.transform(incomplete)
    # Partitions batch other rows together than the whole table does, so float32 sums round differently: equal up to
    # that, 1e-5 of a column's spread on dates and durations (modelled in seconds) as on numbers.
    for name in incomplete.columns:
        a, b = computed[name], in_memory[name]
        if pd.api.types.is_datetime64_any_dtype(a) or pd.api.types.is_timedelta64_dtype(a):
            spread = incomplete[name].dropna().std()
            assert a.dtype == b.dtype and (a - b).abs().max() <= 1e-5 * spread, name
        else:
            pd.testing.assert_series_equal(a, b, rtol=1e-5)


def test_fit_rows_fits_on_a_sample_of_the_stated_size_and_transforms_every_row():
    _, incomplete, _ = typed_frame(rows=150, seed=3)
    imputer = MIWAEImputer(fit_rows=60, **FAST).fit(incomplete)
    assert imputer.fit_rows_ == 60 and imputer.n_features_in_ == incomplete.shape[1]
    assert len(imputer.transform(incomplete)) == 150
    again = MIWAEImputer(fit_rows=60, **FAST).fit(incomplete)
    pd.testing.assert_frame_equal(again.transform(incomplete), imputer.transform(incomplete))  # the same sample
    assert MIWAEImputer(fit_rows=1000, **FAST).fit(incomplete).fit_rows_ == 150  # more than the table: every row
    assert MIWAEImputer(**FAST).fit(incomplete).fit_rows_ == 150
    with pytest.raises(InputError, match="fit_rows must be a whole number of at least 1 or None; got 0"):
        MIWAEImputer(fit_rows=0, **FAST).fit(incomplete)
