"""A real local Kubernetes control plane and fake pods, for tests and the demo."""
