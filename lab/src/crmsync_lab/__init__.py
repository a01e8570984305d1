"""The crmsync lab: mock CRM servers, the harness that runs the whole system as
processes, the benchmark and the demo. It imports the product (``crmsync``);
the product never imports it, and finds its commands through the ``crmsync.cli``
entry point (``crmsync_lab.cli.register``)."""
