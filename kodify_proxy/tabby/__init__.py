"""The Tabby API (tabby-agent and the Tabby IDE plugins): wire models, the service, the routes."""
