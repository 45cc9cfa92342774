"""The Kubernetes backend: ipyparallel engines as pods of one Indexed Job.

Nothing is imported here on purpose: engine pods run ``python -m kubemagic.k8s.engine``
and ``--backend auto`` calls :func:`.incluster.kubernetes_config_available`; neither
should pay for importing the Kubernetes client.
"""
