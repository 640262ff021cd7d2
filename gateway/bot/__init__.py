"""Example bots: plain Kafka consumers of ``<prefix>.calls.inbound``.

``gateway.bot.echo_logic`` holds the echo bot's decisions and imports no
Kafka client, so importing this package stays free of one too; the Kafka
shell and CLI hooks are in ``gateway.bot.echo``.
"""
