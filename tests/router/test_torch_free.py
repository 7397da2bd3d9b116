"""Every router module but the app (whose drift gauges still import `server.drift`, issue 16
part 2) imports no torch, scipy or pandas: the controller with the registry, the request
path with the observation store, the control API, the analyzer and the judge."""

from __future__ import annotations

import pkgutil

import router
from tests.lifecycle.test_torch_free import loaded_after

#: The one router module that loads torch today (drift gauges), until they move out.
NOT_YET = {"router.app"}


def test_router_modules_but_the_app_load_no_torch_scipy_or_pandas() -> None:
    modules = sorted(
        f"router.{m.name}" for m in pkgutil.iter_modules(router.__path__) if not m.ispkg
    )
    assert {"router.controller", "router.proxy", "router.control"} <= set(modules)
    imports = "\n".join(f"import {m}" for m in modules if m not in NOT_YET)
    assert loaded_after(imports) == []
