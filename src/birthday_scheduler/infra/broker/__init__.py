"""Queue adapters: RabbitMQ for production, an in-process queue for the embedded mode."""
