"""What the tests share: servers on loopback, images, LoRAs, PostgreSQL, the bad-input cases."""
