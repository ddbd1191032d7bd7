def gradcheck(*a, **k): raise RuntimeError("wip")
