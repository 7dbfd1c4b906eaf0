"""Fleet: one change across many databases, scheduled by Apache Airflow (``zdm-runbook[airflow]``).

A face, like the command line: each phase of each target runs exactly what ``zdm run`` runs (the
same notebook template, archive and ledger records), as one mapped Airflow task per target. The
targets are Airflow connection ids; a DSN is resolved inside the task and handed to the notebook
through an environment variable, never as a parameter, an XCom or a log line. Gates closed only by
time or a missing sign-off wait deferred, on a trigger that polls the target's ledger.

``targets`` and ``waves`` import no Airflow; ``trigger``, ``operators`` and ``dag`` need the extra.
"""
