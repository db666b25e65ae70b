"""The routing benchmark's machinery (``loadtests/routing_bench.py`` is its command line).

Rooms: ``workload`` (seeded request schedules), ``client`` (the open-loop streaming load
generator), ``procs`` (child processes and their CPU), ``fleet`` (simulated GPU backends, run
as a child process), ``gateway`` (the gateway under test, as a child process), ``stats``
(summaries of one run), ``runner`` (one run, capacity measurement), ``sweep`` (the plan and
the whole sweep), ``report`` (Markdown and JSON).
"""
