"""Long jobs: the service skills call, the poller, results and images."""
