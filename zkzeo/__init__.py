"""zkzeo: ZooKeeper registration and discovery for replicated ZEO clusters."""
