from prunegate.cli import app

app()
