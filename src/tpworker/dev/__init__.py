"""`tpworker dev`: a local RunPod endpoint (jobs, client routes, worker routes) with the real worker behind it."""
