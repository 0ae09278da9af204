SELECT fence_seq, writers FROM outbox.commit_fence()
