"""`tpworker bench`: the same workload against the raw vLLM engine and each path through the worker.

workload.py       what is sent: prompts, lengths, sampling, concurrency, repetitions
request_paths.py  one runner per request path: send one request, time its tokens
phase.py          one process per engine: start it, measure the cold start, run its paths' rounds
phase_process.py  a phase as the run sees it: its child process, its events, its stop
metrics.py        request timings -> figures (tokens/s, TTFT, ITL, latency), median/min/max, ratios
machine.py        what the result was measured on (CPU, GPUs, load)
run.py            the whole run: one phase process after another, progress, targets
results.py        a phase's events -> results per TP size, summaries and ratios to raw
targets.py        the targets checked and the TP scaling of weight memory
options.py        the command-line options
report.py         terminal table, JSON and Markdown
chart.py          the PNG chart
coldstart.py, coldstart_report.py           --cold-start: starts, phases, first jobs
fairness.py, fairness_jobs.py, fairness_report.py, cpu_quiet.py
                  --fairness: valid jobs with one hostile request in flight, and the CPU's return to idle
"""
