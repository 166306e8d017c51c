"""Transport: paramiko SSH/SFTP behind a small interface."""
