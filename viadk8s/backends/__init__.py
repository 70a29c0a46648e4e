"""Where runs execute: ``local`` (worker subprocesses on this machine); Kubernetes Jobs arrive next."""
