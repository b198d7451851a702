"""The seven-week campaign replayed by ``make demo``: a deterministic plan, its ground truth, and the
driver that sends it to the services' public REST APIs."""
